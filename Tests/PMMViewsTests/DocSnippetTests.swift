import PipeMesh
import ShopSchemas
import SwiftProtobuf
import Testing

/// The code of `Sources/PipeMesh/PipeMesh.docc/GettingStarted.md`, kept here so that it compiles against the
/// real API: change the library and this file (and then the article) must follow. It is compiled, not run:
/// running it needs `pmm serve` and a router (the integration tests do that with the same calls).
enum GettingStartedSnippets {
    static func producer() async throws {
        let mesh = PipeMesh(stateDirectory: "/var/lib/pmm")  // nil: PMM_STATE_DIR, else /var/lib/pmm
        let me = try mesh.register(service: "api")
        print(me.instance, me.ingress["metrics"] ?? [])  // api-0, one ingress pipe per shard
        let heartbeats = me.startHeartbeats(every: 5)  // optional: promised beats; three missed end the lease

        let (path, shard) = try mesh.pipeName(dataType: "metrics", shardKey: Array("host-7".utf8))
        print(path, shard)  // <root>/api.metrics.s<shard>.in

        let metrics = try me.producer(for: "metrics", of: Shop_Metrics_V2_Sample.self)
        let sample = Shop_Metrics_V2_Sample.with {
            $0.name = "cpu"
            $0.value = 0.42
            $0.labels = ["host": "host-7"]
        }
        let sequence = try await metrics.send(sample, shardKey: "host-7")  // the frame is in the pipe
        _ = sequence

        heartbeats.cancel()
        try mesh.deregister(service: "api", instance: me.instance)  // leaves routing at once
    }

    static func consumer() async throws {
        let mesh = PipeMesh(stateDirectory: "/var/lib/pmm")
        let collector = try mesh.register(service: "collector")
        let samples = try collector.consumer(for: "metrics", of: Shop_Metrics_V2_Sample.self)
        for try await received in samples {
            print(received.message.name, received.message.value, received.source, received.sequence, received.schemaVersion)
        }
    }
}

@Suite struct DocSnippetTests {
    /// The article quotes this file's calls; a rename in the library breaks the build here first.
    @Test func gettingStarted_quotesTheCompiledSnippets() throws {
        let article = try repositoryFile("Sources/PipeMesh/PipeMesh.docc/GettingStarted.md")
        for call in [
            "let me = try mesh.register(service: \"api\")", "let heartbeats = me.startHeartbeats(every: 5)",
            "try mesh.pipeName(dataType: \"metrics\", shardKey: Array(\"host-7\".utf8))",
            "try me.producer(for: \"metrics\", of: Shop_Metrics_V2_Sample.self)", "try await metrics.send(sample, shardKey: \"host-7\")",
            "try collector.consumer(for: \"metrics\", of: Shop_Metrics_V2_Sample.self)",
            "try mesh.deregister(service: \"api\", instance: me.instance)",
        ] {
            #expect(article.contains(call), "GettingStarted.md no longer shows \(call)")
        }
    }
}
