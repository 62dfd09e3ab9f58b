// swift-tools-version:6.2
import PackageDescription

let upcoming: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

/// Generated protobuf code imports SwiftProtobuf without `public`, so PMMWire keeps imports public by default.
let generatedCode: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "pmm",
    platforms: [.macOS(.v15)],  // ignored on Linux; GRDB needs macOS >= 10.15
    products: [
        .executable(name: "pmm", targets: ["pmm"]),
        .library(name: "PMMCore", targets: ["PMMCore"]),
        // The client library for services: register, send and receive typed messages.
        .library(name: "PipeMesh", targets: ["PipeMesh"]),
        // The wire format (framing, envelope scanner), for tools and the micro-benchmarks in Benchmarks/.
        .library(name: "PMMWire", targets: ["PMMWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        // No traits: the default BinaryDelimitedStreams trait needs Foundation streams, and pmm frames itself.
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0", traits: []),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Links between routers (issue 13): TCP and mutual TLS. swift-nio-ssl builds BoringSSL from source.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        // Pure: spec model, diagnostics, naming, hashing, validation, planning. Standard library only.
        .target(name: "PMMCore", swiftSettings: upcoming),
        // Pure: YAML text -> MeshSpec + diagnostics with file:line:column. Never opens files.
        .target(
            name: "PMMSpecYAML",
            dependencies: ["PMMCore", .product(name: "Yams", package: "Yams")],
            swiftSettings: upcoming
        ),
        // epoll(7), which Swift's Glibc module does not import (C, a few lines).
        .target(name: "CPMMLinux"),
        // The operating-system layer: FIFOs under a held directory descriptor, spec files, git, epoll, inotify.
        .target(
            name: "PMMSystem",
            dependencies: ["PMMCore", "CPMMLinux", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: upcoming
        ),
        // The SQLite registry: revisions, the inventory of pipes pmm made, events.
        .target(
            name: "PMMRegistry",
            dependencies: ["PMMCore", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: upcoming
        ),
        // The wire format: varint framing, the envelope's routing fields, generated pmm.v1 messages.
        .target(
            name: "PMMWire",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: generatedCode
        ),
        // Pure: the router's decisions as a state machine (events in, actions out), no syscalls.
        .target(name: "PMMRouterCore", dependencies: ["PMMCore", "PMMWire"], swiftSettings: upcoming),
        // The data plane's shell: a poll loop over the ingress and egress FIFOs that performs the core's actions.
        .target(
            name: "PMMRouter",
            dependencies: [
                "PMMCore", "PMMWire", "PMMSystem", "PMMRouterCore", "PMMLink", .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: upcoming
        ),
        // Links between routers: pmm.v1.LinkMessage over TCP (optionally mutual TLS) on one NIO event loop, met by
        // the router's poll loop through mutex-guarded queues and an eventfd. The pure parts (codec, sequence and
        // window bookkeeping, backoff, certificate name rules) import no NIO.
        .target(
            name: "PMMLink",
            dependencies: [
                "PMMWire", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        // A small program on one end of a link, for the tests across network namespaces and the link benchmark.
        .executableTarget(
            name: "link-probe",
            dependencies: ["PMMLink", "PMMWire", .product(name: "Logging", package: "swift-log")],
            path: "Examples/LinkProbe", swiftSettings: upcoming),
        // `pmm bench`: the routed path against direct FIFOs, with HdrHistogram latencies.
        .target(
            name: "PMMBench",
            dependencies: ["PMMCore", "PMMWire", "PMMSystem", .product(name: "Histogram", package: "hdrhistogram-swift")],
            swiftSettings: upcoming
        ),
        // Schemas: .proto files through protoc into descriptors, for the compatibility check.
        .target(
            name: "PMMSchema",
            dependencies: ["PMMCore", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: upcoming
        ),
        // The control plane: the API on pmm.sock (SO_PEERCRED) and self-heal.
        .target(
            name: "PMMControl",
            dependencies: [
                "PMMCore", "PMMWire", "PMMSystem", "PMMRegistry", "PMMReconciler", .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: upcoming
        ),
        // The client library for services.
        .target(
            name: "PipeMesh",
            dependencies: ["PMMCore", "PMMWire", "PMMSystem", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: upcoming
        ),
        // The imperative shell: load, observe, plan, execute, record.
        .target(
            name: "PMMReconciler",
            dependencies: ["PMMCore", "PMMSpecYAML", "PMMSystem", "PMMRegistry", "PMMSchema"],
            swiftSettings: upcoming
        ),
        // Pure renderings for people: the mesh as a picture (`pmm graph`) and the router's status as a frame
        // (`pmm top`). Values in, text out; the commands do the I/O.
        .target(name: "PMMViews", dependencies: ["PMMCore", "PMMRouter"], swiftSettings: upcoming),
        .executableTarget(
            name: "pmm",
            dependencies: [
                "PMMCore", "PMMSpecYAML", "PMMSystem", "PMMRegistry", "PMMReconciler", "PMMWire", "PMMRouter", "PMMRouterCore", "PMMControl",
                "PMMBench", "PipeMesh", "PMMViews", .product(name: "Yams", package: "Yams"), .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: upcoming
        ),
        // Examples: two services built on PipeMesh (used by `pmm demo` when built next to pmm).
        .target(
            name: "ShopSchemas", dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Examples/ShopSchemas", swiftSettings: generatedCode),
        .executableTarget(
            name: "example-producer",
            dependencies: [
                "PipeMesh", "ShopSchemas", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Examples/ProducerExample", swiftSettings: upcoming),
        .executableTarget(
            name: "example-consumer",
            dependencies: [
                "PipeMesh", "ShopSchemas", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Examples/ConsumerExample", swiftSettings: upcoming),
        // Fixtures/ is read by path (routing-golden.json, written by scripts/routing-golden).
        .testTarget(name: "PMMCoreTests", dependencies: ["PMMCore"], exclude: ["Fixtures"], swiftSettings: upcoming),
        // The router core, driven by seeded random schedules in a simulated world (SIMULATION.md).
        .testTarget(
            name: "PMMRouterCoreTests",
            dependencies: ["PMMCore", "PMMRouterCore", "PMMWire", "PMMSpecYAML", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: upcoming),
        .testTarget(
            name: "PMMWireTests", dependencies: ["PMMWire", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: upcoming),
        // Links: codec and bookkeeping (pure), loopback sockets with real TLS, and two network namespaces (root).
        .testTarget(
            name: "PMMLinkTests",
            dependencies: [
                "PMMLink", "PMMWire", "PMMRouterCore", "PMMSystem", "link-probe", "pmm",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: upcoming),
        .testTarget(
            name: "PMMSpecYAMLTests",
            dependencies: ["PMMCore", "PMMSpecYAML"],
            swiftSettings: upcoming
        ),
        // The renderings against golden text; docs/mesh.dot, deploy/grafana/pmm.json and the PipeMesh DocC article
        // against the sources.
        .testTarget(
            name: "PMMViewsTests", dependencies: ["PMMViews", "PMMCore", "PMMSpecYAML", "PMMRouter", "PipeMesh", "ShopSchemas",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ], exclude: ["Snapshots"],
            swiftSettings: upcoming),
        // Real FIFOs, real SQLite, real uids (setpriv), and the built pmm binary.
        .testTarget(
            name: "PMMIntegrationTests",
            dependencies: [
                "PMMCore", "PMMSpecYAML", "PMMSystem", "PMMRegistry", "PMMReconciler", "PMMWire", "PMMRouter", "PMMRouterCore", "PipeMesh", "pmm",
                "example-producer", "example-consumer",
                // DeployTests parses the Kubernetes manifests.
                .product(name: "Yams", package: "Yams"),
                // RouterLoopTests runs a router's loop steps in the test process.
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
    ]
)

// Micro-benchmarks of the hot path (ordo-one/package-benchmark), only when asked for, so that tests and CI
// never build them:  PMM_BENCHMARKS=1 swift package --scratch-path .build-bench benchmark
if Context.environment["PMM_BENCHMARKS"] != nil {
    package.dependencies.append(
        .package(url: "https://github.com/ordo-one/package-benchmark", from: "1.38.1", traits: ["MallocInterposer"]))
    package.targets.append(
        .executableTarget(
            name: "HotPath",
            dependencies: ["PMMCore", "PMMWire", "PMMRouterCore", .product(name: "Benchmark", package: "package-benchmark")],
            path: "Benchmarks/HotPath",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
        ))
}
