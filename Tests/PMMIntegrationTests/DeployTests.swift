import Foundation
import Glibc
import PMMRouter
import Testing
import Yams

/// What deploy/ ships: the systemd units (checked by systemd-analyze, and their READY=1 through a real notify
/// socket), the Debian package (installed and removed with dpkg) and the Kubernetes manifests (parsed and
/// checked; no cluster here).
@Suite(.serialized) struct DeployTests {
    static let units = ["pmm-serve.service", "pmm-router.service"]

    // MARK: version

    @Test func version_printsTheVersionAndTheCommit_asTextJSONAndFlag() throws {
        let text = try pmm("version")
        #expect(text.status == 0, "\(text.stderr)")
        let lines = text.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2 && lines[0].hasPrefix("pmm ") && lines[1].hasPrefix("commit "), "\(text.stdout)")
        let version = String(lines[0].dropFirst("pmm ".count))

        let json = try pmm("version", "-o", "json")
        let info = try JSONDecoder().decode([String: String].self, from: Data(json.stdout.utf8))
        #expect(info["version"] == version && info["commit"] == String(lines[1].dropFirst("commit ".count)))

        let flag = try pmm("--version")
        #expect(flag.status == 0)
        #expect(flag.stdout.hasPrefix("\(version) (commit "), "\(flag.stdout)")
    }

    // MARK: systemd

    /// The units as shipped, with ExecStart pointing at the built binary (systemd-analyze checks that the command
    /// exists), pass `systemd-analyze verify` with nothing to say.
    @Test func systemdUnits_passSystemdAnalyzeVerify() throws {
        let dir = TemporaryDirectory("pmm-units")
        for unit in Self.units {
            let text = try String(contentsOfFile: packageRoot + "/deploy/systemd/" + unit, encoding: .utf8)
            #expect(text.contains("ExecStart=/usr/bin/pmm "))
            dir.write(text.replacingOccurrences(of: "/usr/bin/pmm", with: pmmBinary), to: unit)
        }
        let outcome = try run("/usr/bin/systemd-analyze", ["verify", "--man=no"] + Self.units.map { dir.path + "/" + $0 })
        #expect(outcome.status == 0, "\(outcome.stdout)\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty && outcome.stderr.isEmpty, "\(outcome.stdout)\(outcome.stderr)")
    }

    @Test(arguments: units) func systemdUnit_notifiesReloadsWithHUPAndKeepsThePipes(unit: String) throws {
        let settings = try Self.unitSettings(packageRoot + "/deploy/systemd/" + unit)
        #expect(settings["Type"] == ["notify"])
        #expect(settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"])
        #expect(settings["Restart"] == ["on-failure"])
        #expect(settings["StateDirectory"] == ["pmm"])
        #expect(settings["RuntimeDirectory"] == ["pmm"])
        #expect(settings["RuntimeDirectoryPreserve"] == ["yes"])
        #expect(settings["ProtectSystem"] == ["strict"])
        #expect(settings["NoNewPrivileges"] == ["yes"])
        #expect(settings["CapabilityBoundingSet"] == ["CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE"])
        #expect(settings["ExecStart"]?.first?.contains("--state-dir /var/lib/pmm") == true)
        let text = try String(contentsOfFile: packageRoot + "/deploy/systemd/" + unit, encoding: .utf8)
        #expect(text.contains("#Environment=PMM_NODE="), "the node is one uncommented line away")
    }

    /// `pmm router` under a service manager: READY=1 arrives on $NOTIFY_SOCKET (a path) once it serves.
    @Test(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"))
    func router_sendsReadyToNotifySocket_onceItServesTheRevision() throws {
        let h = try MeshHarness(routerMesh())
        let socketPath = h.dir.path + "/notify.sock"
        let socket = try NotifySocket(path: socketPath)
        let router = try Self.spawn(["router", h.stateArgument], environment: ["NOTIFY_SOCKET": socketPath], log: h.dir.path + "/router")
        h.router = router
        let message = try #require(socket.receive(timeout: 20), "no notification; router log: \(h.routerLog())")
        #expect(message.split(separator: "\n").contains("READY=1"), "\(message)")
        #expect(h.status?.revision == 1, "ready only once it serves revision 1")

        // The DaemonSet's readiness probe, run against this state directory, says ready too.
        let probe = try Self.readinessProbe().replacingOccurrences(of: "/usr/bin/pmm", with: pmmBinary)
            .replacingOccurrences(of: "/var/lib/pmm", with: h.dir.path + "/state")
        #expect(try run("/bin/sh", ["-c", probe]).status == 0)
        h.signalRouter(SIGTERM)
        router.waitUntilExit()
        #expect(try run("/bin/sh", ["-c", probe]).status != 0, "not ready once the router is gone")
    }

    /// `pmm serve` under a service manager: READY=1 arrives on an abstract-namespace $NOTIFY_SOCKET ('@…') once
    /// it has applied the spec and listens on pmm.sock.
    @Test(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"))
    func serve_sendsReadyToAbstractNotifySocket_onceItListens() throws {
        let dir = TemporaryDirectory("pmm-serve")
        dir.write(routerMesh().replacingOccurrences(of: "ROOT", with: dir.root))
        let name = "@pmm-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let socket = try NotifySocket(path: name)
        let serve = try Self.spawn(
            ["serve", "-f", dir.specPath, "--state-dir", dir.path + "/state"], environment: ["NOTIFY_SOCKET": name], log: dir.path + "/serve")
        defer {
            kill(serve.processIdentifier, SIGTERM)
            serve.waitUntilExit()
        }
        let log = { (try? String(contentsOfFile: dir.path + "/serve.err", encoding: .utf8)) ?? "" }
        let message = try #require(socket.receive(timeout: 20), "no notification; serve log: \(log())")
        #expect(message == "READY=1")
        var info = stat()
        #expect(lstat(dir.path + "/state/pmm.sock", &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK, "listening when ready")
        #expect(lstat(dir.root + "/api.metrics.s0.in", &info) == 0, "the spec applied when ready")
    }

    @Test func up_acceptsNode() throws {
        let help = try pmm("up", "--help")
        #expect(help.stdout.contains("--node <name>"), "\(help.stdout)")
    }

    /// `pmm up --node N` (the DaemonSet's command) applies node N's share only, and records N in the revision.
    /// What the router does next with a spec that has nodes (today: refuses it) is not this test's business, so
    /// the process is stopped once the apply is done.
    @Test(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"))
    func up_withNode_appliesOnlyThatNodesPipes() throws {
        let dir = TemporaryDirectory("pmm-up")
        dir.write(twoNodeMesh(root: dir.root))
        let up = try Self.spawn(["up", "-f", dir.specPath, "--state-dir", dir.path + "/state", "--node", "edge-b"], environment: [:], log: dir.path + "/up")
        defer {
            if up.isRunning { kill(up.processIdentifier, SIGTERM) }
            up.waitUntilExit()
        }
        let log = { (try? String(contentsOfFile: dir.path + "/up", encoding: .utf8)) ?? "" }
        try waitFor("pmm up to apply") { log().contains("Applied revision 1") || !up.isRunning }
        #expect(log().contains("Applied revision 1"), "\(log())")
        let pipes = ((try? FileManager.default.contentsOfDirectory(atPath: dir.root)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        #expect(pipes == ["api.metrics.s0.in", "api.metrics.s1.in", "collector-edge-b-0.metrics.out", "collector-edge-b-1.metrics.out"])
    }

    // MARK: Debian package

    /// scripts/package on the debug binary (the release build is separate: README, "Packaging"), installed with
    /// dpkg, run from /usr/bin, its units verified where they are installed (man pages included), removed.
    @Test(.enabled(if: isRoot, "dpkg -i needs root"))
    func package_installsWithDpkg_runsAndVerifies_andRemovesCleanly() throws {
        let installed = try run("/usr/bin/dpkg-query", ["-W", "-f=${Status}", "pmm"])
        try #require(!installed.stdout.contains("ok installed"), "a pmm package is installed on this machine already; not touching it")
        try #require(!FileManager.default.fileExists(atPath: "/usr/bin/pmm"), "/usr/bin/pmm exists already; not touching it")
        let dir = TemporaryDirectory("pmm-package")
        let built = try run(packageRoot + "/scripts/package", ["--binary", pmmBinary, "--output", dir.path + "/dist"])
        try #require(built.status == 0, "\(built.stdout)\(built.stderr)")
        let debs = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/dist").filter { $0.hasSuffix(".deb") }
        let deb = dir.path + "/dist/" + (try #require(debs.first))

        let contents = try run("/usr/bin/dpkg-deb", ["--contents", deb]).stdout
        for path in [
            "./usr/bin/pmm", "./usr/share/man/man1/pmm.1.gz", "./usr/share/man/man1/pmm.apply.1.gz",
            "./usr/share/bash-completion/completions/pmm", "./usr/share/zsh/vendor-completions/_pmm",
            "./usr/share/fish/vendor_completions.d/pmm.fish", "./lib/systemd/system/pmm-serve.service",
            "./lib/systemd/system/pmm-router.service", "./usr/share/doc/pmm/mesh.yaml.example",
            "./usr/share/doc/pmm/schemas/mesh.schema.json",
        ] {
            #expect(contents.contains(" \(path)\n"), "\(path) in the package")
        }

        let install = try run("/usr/bin/dpkg", ["-i", deb])
        defer { _ = try? run("/usr/bin/dpkg", ["--purge", "pmm"]) }
        try #require(install.status == 0, "\(install.stdout)\(install.stderr)")
        let version = try run("/usr/bin/pmm", ["--version"])
        #expect(version.status == 0 && version.stdout.contains("(commit "), "\(version.stdout)\(version.stderr)")
        let validate = try run("/usr/bin/pmm", ["validate", "-f", "/usr/share/doc/pmm/mesh.yaml.example"])
        #expect(validate.status == 0, "\(validate.stdout)\(validate.stderr)")
        let verify = try run("/usr/bin/systemd-analyze", ["verify"] + Self.units.map { "/lib/systemd/system/" + $0 })
        #expect(verify.status == 0, "installed units, man pages checked: \(verify.stdout)\(verify.stderr)")

        let remove = try run("/usr/bin/dpkg", ["-r", "pmm"])
        #expect(remove.status == 0, "\(remove.stdout)\(remove.stderr)")
        for path in ["/usr/bin/pmm", "/lib/systemd/system/pmm-router.service", "/usr/share/man/man1/pmm.1.gz", "/usr/share/doc/pmm"] {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) is gone after dpkg -r")
        }
    }

    // MARK: Kubernetes

    /// The manifests are parsed and checked field by field (no cluster here): a DaemonSet running
    /// `pmm up --node $(NODE_NAME)` with NODE_NAME from spec.nodeName, the pipe root and state on hostPath, the spec
    /// from the generated ConfigMap, the link port, the TLS Secret where links.tls points.
    @Test func kubernetesManifests_runPmmUpOnTheirNode_withHostPathsConfigMapAndTLS() throws {
        let directory = packageRoot + "/deploy/kubernetes/"
        let kustomization = try Self.yaml(directory + "kustomization.yaml")
        let resources = try #require(kustomization["resources"] as? [String])
        for resource in resources { #expect(FileManager.default.fileExists(atPath: directory + resource), "\(resource)") }
        let generator = try #require((kustomization["configMapGenerator"] as? [[String: Any]])?.first)
        #expect(generator["files"] as? [String] == ["mesh.yaml"])
        let configMapName = try #require(generator["name"] as? String)

        let daemonSet = try #require(
            try resources.map { try Self.yaml(directory + $0) }.first { $0["kind"] as? String == "DaemonSet" })
        #expect(daemonSet["apiVersion"] as? String == "apps/v1")
        let spec = try #require(daemonSet["spec"] as? [String: Any])
        let strategy = try #require(spec["updateStrategy"] as? [String: Any])
        #expect(strategy["type"] as? String == "RollingUpdate")
        #expect((strategy["rollingUpdate"] as? [String: Any])?["maxUnavailable"] as? Int == 1)
        let pod = try #require((spec["template"] as? [String: Any])?["spec"] as? [String: Any])
        let container = try #require((pod["containers"] as? [[String: Any]])?.first)

        let arguments = try #require(container["args"] as? [String])
        #expect(arguments.first == "up")
        #expect(arguments.contains("--node") && arguments[arguments.firstIndex(of: "--node")! + 1] == "$(NODE_NAME)", "\(arguments)")
        let environment = try #require(container["env"] as? [[String: Any]])
        let nodeName = try #require(environment.first { $0["name"] as? String == "NODE_NAME" })
        let fieldRef = (nodeName["valueFrom"] as? [String: Any])?["fieldRef"] as? [String: Any]
        #expect(fieldRef?["fieldPath"] as? String == "spec.nodeName")

        // Volumes by mount path.
        let volumes = try #require(pod["volumes"] as? [[String: Any]])
        let mounts = try #require(container["volumeMounts"] as? [[String: Any]])
        func volume(mountedAt path: String) -> [String: Any]? {
            guard let name = mounts.first(where: { $0["mountPath"] as? String == path })?["name"] as? String else { return nil }
            return volumes.first { $0["name"] as? String == name }
        }
        #expect((volume(mountedAt: "/run/pmm")?["hostPath"] as? [String: Any])?["path"] as? String == "/run/pmm")
        #expect((volume(mountedAt: "/var/lib/pmm")?["hostPath"] as? [String: Any])?["path"] as? String == "/var/lib/pmm")
        #expect(arguments[arguments.firstIndex(of: "--state-dir")! + 1] == "/var/lib/pmm")
        let specPath = arguments[arguments.firstIndex(of: "-f")! + 1]
        let specDirectory = (specPath as NSString).deletingLastPathComponent
        #expect((volume(mountedAt: specDirectory)?["configMap"] as? [String: Any])?["name"] as? String == configMapName)
        #expect((specPath as NSString).lastPathComponent == "mesh.yaml")

        // The spec the ConfigMap carries: valid, its root on the pipes' hostPath, its TLS files in the Secret's
        // mount, its nodes' link port the container's.
        let mesh = try Self.yaml(directory + "mesh.yaml")
        #expect((mesh["root"] as? String)?.hasPrefix("/run/pmm/") == true)
        let tls = try #require((mesh["links"] as? [String: Any])?["tls"] as? [String: String])
        for (_, path) in tls {
            let mounted = volume(mountedAt: (path as NSString).deletingLastPathComponent)
            #expect(mounted?["secret"] != nil, "\(path) is in a mounted Secret")
        }
        let ports = try #require(container["ports"] as? [[String: Any]])
        let nodes = try #require(mesh["nodes"] as? [String: [String: Any]])
        for (node, settings) in nodes {
            let port = (settings["address"] as? String)?.split(separator: ":").last.flatMap { Int($0) }
            #expect(ports.contains { $0["containerPort"] as? Int == port && $0["hostPort"] as? Int == port }, "node \(node)'s link port")
        }
        let validate = try pmm("validate", "-f", directory + "mesh.yaml")
        #expect(validate.status == 0, "\(validate.stdout)\(validate.stderr)")

        #expect(container["resources"] != nil)
        let security = try #require(container["securityContext"] as? [String: Any])
        #expect(security["allowPrivilegeEscalation"] as? Bool == false)
        let capabilities = try #require(security["capabilities"] as? [String: [String]])
        #expect(capabilities["drop"] == ["ALL"] && Set(capabilities["add"] ?? []) == ["CHOWN", "FOWNER", "DAC_OVERRIDE"])
        #expect(!(try Self.readinessProbe()).isEmpty)
    }

    /// Where kubectl exists (it does on this project's machines), kustomize renders the directory offline: the
    /// ConfigMap gets its hash suffix and the DaemonSet refers to it by that name.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/kubectl"), "kubectl is not installed"))
    func kubernetesKustomization_rendersWithKubectlKustomize() throws {
        let rendered = try run("/usr/bin/kubectl", ["kustomize", packageRoot + "/deploy/kubernetes"])
        try #require(rendered.status == 0, "\(rendered.stderr)")
        let documents = try Yams.load_all(yaml: rendered.stdout).compactMap { $0 as? [String: Any] }
        let kinds = Set(documents.compactMap { $0["kind"] as? String })
        #expect(kinds == ["Namespace", "ConfigMap", "DaemonSet"])
        let configMap = try #require(documents.first { $0["kind"] as? String == "ConfigMap" })
        let name = try #require((configMap["metadata"] as? [String: Any])?["name"] as? String)
        #expect(name.hasPrefix("pmm-mesh-") && name.count > "pmm-mesh-".count, "hash-suffixed: \(name)")
        #expect(rendered.stdout.contains("name: \(name)\n"), "the DaemonSet mounts the hash-suffixed ConfigMap")
    }

    // MARK: helpers

    /// The DaemonSet's readiness probe, as one shell command.
    static func readinessProbe() throws -> String {
        let daemonSet = try yaml(packageRoot + "/deploy/kubernetes/daemonset.yaml")
        let spec = (daemonSet["spec"] as? [String: Any])?["template"] as? [String: Any]
        let container = ((spec?["spec"] as? [String: Any])?["containers"] as? [[String: Any]])?.first
        let command = ((container?["readinessProbe"] as? [String: Any])?["exec"] as? [String: Any])?["command"] as? [String]
        let parts = try #require(command)
        try #require(parts.count == 3 && parts[0] == "/bin/sh" && parts[1] == "-c", "\(parts)")
        return parts[2]
    }

    static func yaml(_ path: String) throws -> [String: Any] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try #require(try Yams.load(yaml: text) as? [String: Any], "\(path) is a YAML mapping")
    }

    /// `Key=Value` lines of a unit file, every value of each key.
    static func unitSettings(_ path: String) throws -> [String: [String]] {
        var settings: [String: [String]] = [:]
        for line in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") {
            guard !line.hasPrefix("#"), !line.hasPrefix("["), let equals = line.firstIndex(of: "=") else { continue }
            settings[String(line[..<equals]), default: []].append(String(line[line.index(after: equals)...]))
        }
        return settings
    }

    /// Starts pmm with `arguments` and extra environment, its output in `log` and `log.err`.
    static func spawn(_ arguments: [String], environment: [String: String], log: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: pmmBinary)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["NO_COLOR"] = "1"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        _ = FileManager.default.createFile(atPath: log + ".err", contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: log)
        process.standardError = FileHandle(forWritingAtPath: log + ".err")
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return process
    }
}

/// A unix datagram socket bound where a service manager's would be: a path, or an abstract name ('@…').
final class NotifySocket {
    let fd: Int32

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(fd >= 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var name = Array(path.utf8)
        let abstract = name.first == UInt8(ascii: "@")
        if abstract { name[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: name) }
        let length = socklen_t(MemoryLayout.offset(of: \sockaddr_un.sun_path)! + name.count + (abstract ? 0 : 1))
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        try #require(bound == 0, "bind \(path): \(String(cString: strerror(errno)))")
    }

    deinit { close(fd) }

    /// The next datagram, or nil after `timeout` seconds.
    func receive(timeout: Double) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
    }
}
