import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMSpecYAML
import Testing

/// The `pmm` binary driven as a user would: exit codes, stdout and stderr.
@Suite struct CLITests {
    @Test func validate_whenValid_exits0() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let outcome = try pmm("validate", "-f", "mesh.yaml", in: dir.path)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("mesh.yaml: valid (1 data types, 2 services, 4 pipes)"))
    }

    @Test func validate_whenInvalid_printsEveryErrorWithPositionAndExits1() throws {
        let dir = TemporaryDirectory()
        dir.write(meshYAML(root: dir.root).replacingOccurrences(of: "uid: 1001", with: "uid: api").replacingOccurrences(of: "- service: collector", with: "- service: colector"))
        let outcome = try pmm("validate", "-f", "mesh.yaml", in: dir.path)
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("mesh.yaml:10:10: error: services.api.uid: expected an integer (a numeric uid or gid), found string \"api\" [E005]"), "\(outcome.stderr)")
        #expect(outcome.stderr.contains("mesh.yaml:21:18: error: routes.metrics.targets[0].service: route 'metrics' targets unknown service 'colector' [E008]"))
        #expect(outcome.stderr.contains("note: did you mean 'collector'?"))
        #expect(outcome.stderr.contains("2 errors, 0 warnings."))
        #expect(!outcome.stderr.contains("DecodingError"))
    }

    @Test func validate_whenFileIsMissing_saysSo() throws {
        let outcome = try pmm("validate", "-f", "/nonexistent/mesh.yaml")
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("/nonexistent/mesh.yaml: no such file"))
    }

    @Test func validate_readsStandardInput() throws {
        let outcome = try pmm("validate", "-f", "-", stdin: meshYAML(root: "/run/pmm/x"))
        #expect(outcome.status == 0, "\(outcome.stderr)")
    }

    @Test func validate_exampleSpecIsValid() throws {
        let outcome = try pmm("validate", "-f", packageRoot + "/mesh.yaml.example")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let codes = outcome.stderr.split(separator: "\n").filter { $0.contains(": warning: ") || $0.contains(": error: ") }
        #expect(codes.allSatisfy { $0.hasSuffix("[W003]") }, "only the PIPE_BUF warning the example teaches: \(outcome.stderr)")
    }

    @Test(.enabled(if: isRoot)) func diffApplyHistoryRollback_endToEnd() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let state = "--state-dir=\(dir.path)/state"
        var outcome = try pmm("diff", "-f", "mesh.yaml", state, in: dir.path)
        #expect(outcome.status == 1, "differences: \(outcome.stderr)")
        #expect(outcome.stdout.contains("+ api.metrics.s0.in"))
        #expect(outcome.stdout.contains("Apply would record revision 1."))

        outcome = try pmm("apply", "-f", "mesh.yaml", state, "--dry-run", in: dir.path)
        #expect(outcome.status == 0 && outcome.stdout.contains("Dry run: 4 to create"))
        #expect(!FileManager.default.fileExists(atPath: dir.root))

        outcome = try pmm("apply", "-f", "mesh.yaml", state, in: dir.path)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("Applied revision 1"))

        outcome = try pmm("diff", "-f", "mesh.yaml", state, in: dir.path)
        #expect(outcome.status == 0, "no differences after apply: \(outcome.stdout)")
        #expect(outcome.stdout.contains("No differences. Revision 1 is current."))

        outcome = try pmm("apply", "-f", "mesh.yaml", state, in: dir.path)
        #expect(outcome.stdout.contains("No changes. Revision 1 is current."))

        dir.writeSpec(replicas: 3, weight: 5)
        outcome = try pmm("diff", "-f", "mesh.yaml", state, "-o", "json", in: dir.path)
        #expect(outcome.status == 1)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
        #expect(json["differences"] as? Bool == true)
        let pipes = try #require(json["pipes"] as? [[String: Any]])
        #expect(pipes.map { $0["name"] as? String } == ["collector-2.metrics.out"])
        let spec = try #require(json["spec"] as? [[String: Any]])
        #expect(Set(spec.compactMap { $0["path"] as? String }) == ["routes.metrics.targets.collector.weight", "services.collector.replicas"])
        #expect((json["revision"] as? [String: Any])?["next"] as? Int == 2)

        #expect(try pmm("apply", "-f", "mesh.yaml", state, in: dir.path).status == 0)
        outcome = try pmm("history", state)
        #expect(outcome.status == 0)
        #expect(outcome.stdout.split(separator: "\n").count == 3, "\(outcome.stdout)")

        outcome = try pmm("rollback", "1", state, "--prune")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("- collector-2.metrics.out") && outcome.stdout.contains("Applied revision 3"))

        outcome = try pmm("history", state, "-o", "json")
        let history = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [[String: Any]])
        #expect(history.map { $0["source"] as? String } == ["apply", "apply", "rollback to 1"])

        outcome = try pmm("rollback", "7", state)
        #expect(outcome.status == 1 && outcome.stderr.contains("there is no revision 7; revisions run from 1 to 3"))
    }

    @Test func diff_whenSpecIsInvalid_exits2() throws {
        let dir = TemporaryDirectory()
        dir.write("apiVersion: pmm/v1\nkind: Mesh\n")
        let outcome = try pmm("diff", "-f", "mesh.yaml", "--state-dir=\(dir.path)/state", in: dir.path)
        #expect(outcome.status == 2)
        #expect(outcome.stderr.contains("required key 'name' is missing"))
    }

    @Test(.enabled(if: isRoot)) func diff_whenSymlinkIsPlanted_exits2AndNamesIt() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let state = "--state-dir=\(dir.path)/state"
        #expect(try pmm("apply", "-f", "mesh.yaml", state, in: dir.path).status == 0)
        unlink(dir.root + "/api.metrics.s0.in")
        symlink("/etc/passwd", dir.root + "/api.metrics.s0.in")
        let diff = try pmm("diff", "-f", "mesh.yaml", state, in: dir.path)
        #expect(diff.status == 2)
        #expect(diff.stdout.contains("api.metrics.s0.in: a symbolic link stands where this pipe belongs"))
        let apply = try pmm("apply", "-f", "mesh.yaml", state, in: dir.path)
        #expect(apply.status == 1 && apply.stderr.contains("nothing was changed"))
    }

    @Test func diff_base_comparesWithAFileOffline() throws {
        let dir = TemporaryDirectory()
        dir.write(meshYAML(root: "/run/pmm/t", replicas: 2, shards: 2), to: "old.yaml")
        dir.write(meshYAML(root: "/run/pmm/t", apiUID: 1009, replicas: 3, shards: 4, weight: 3))
        let outcome = try pmm("diff", "-f", "mesh.yaml", "--base", "old.yaml", in: dir.path)
        #expect(outcome.status == 1, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("± api.metrics.s0.in") && outcome.stdout.contains("owner uid 1001 → uid 1009"))
        #expect(outcome.stdout.contains("+ api.metrics.s3.in") && outcome.stdout.contains("+ collector-2.metrics.out"))
        #expect(outcome.stdout.contains("~ dataTypes.metrics.shards: 2 → 4"))
        #expect(outcome.stdout.contains("Keys of 'metrics': 49.9% move to another shard, 33.6% to another instance (of 10000 sampled)."), "\(outcome.stdout)")
        let same = try pmm("diff", "-f", "old.yaml", "--base", "old.yaml", in: dir.path)
        #expect(same.status == 0 && same.stdout.contains("No differences."))
    }

    @Test func diff_base_comparesWithAGitRevision() throws {
        let dir = TemporaryDirectory()
        dir.write(meshYAML(root: "/run/pmm/t"))
        let git = { (args: [String]) throws -> Outcome in
            try run("/usr/bin/git", ["-c", "user.name=t", "-c", "user.email=t@t", "-C", dir.path] + args)
        }
        #expect(try git(["init", "-q"]).status == 0)
        #expect(try git(["add", "mesh.yaml"]).status == 0)
        #expect(try git(["commit", "-qm", "one"]).status == 0)
        dir.write(meshYAML(root: "/run/pmm/t", replicas: 1))
        let outcome = try pmm("diff", "-f", "mesh.yaml", "--base", "HEAD", "-o", "json", in: dir.path)
        #expect(outcome.status == 1, "\(outcome.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
        #expect(json["base"] as? String == "HEAD:mesh.yaml")
        #expect((json["pipes"] as? [[String: Any]])?.first?["action"] as? String == "delete")
        let movement = try #require((json["keyMovement"] as? [[String: Any]])?.first)
        let share = try #require(movement["instanceMovedShare"] as? Double)
        #expect(share > 0.3 && share < 0.7, "about half the keys lived on collector-1: \(share)")
        let missing = try pmm("diff", "-f", "mesh.yaml", "--base", "no-such-rev", in: dir.path)
        #expect(missing.status == 2 && missing.stderr.contains("neither a file nor a git revision"))
    }

    @Test(.enabled(if: isRoot)) func apply_recordsGitCommitAndDirtyFlag() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let git = { (args: [String]) throws -> Outcome in
            try run("/usr/bin/git", ["-c", "user.name=t", "-c", "user.email=t@t", "-C", dir.path] + args)
        }
        _ = try git(["init", "-q"])
        _ = try git(["add", "mesh.yaml"])
        _ = try git(["commit", "-qm", "one"])
        let commit = try git(["rev-parse", "HEAD"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let state = "--state-dir=\(dir.path)/state"
        #expect(try pmm("apply", "-f", "mesh.yaml", state, in: dir.path).status == 0)
        dir.writeSpec(replicas: 1)
        #expect(try pmm("apply", "-f", "mesh.yaml", state, in: dir.path).status == 0)
        let history = try #require(try JSONSerialization.jsonObject(with: Data(try pmm("history", state, "-o", "json").stdout.utf8)) as? [[String: Any]])
        #expect(history.map { $0["gitCommit"] as? String } == [commit, commit])
        #expect(history.map { $0["gitDirty"] as? Bool } == [false, true])
    }

    @Test func rootOverride_fromEnvironmentIsValidated() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let outcome = try pmm("validate", "-f", "mesh.yaml", in: dir.path, environment: ["PMM_ROOT": "relative/dir"])
        #expect(outcome.status == 1 && outcome.stderr.contains("(from --root or PMM_ROOT) must be an absolute path"))
    }

    @Test func help_explainsEveryCommand() throws {
        let outcome = try pmm("--help")
        #expect(outcome.status == 0)
        for command in ["validate", "diff", "apply", "history", "rollback", "demo"] {
            #expect(outcome.stdout.contains(command))
        }
        #expect(try pmm("diff", "--help").stdout.contains("--base"))
    }

    /// Every command, subcommands included, ends its --help with its exit codes (issue 15's CLI conventions).
    @Test func everyCommandsHelp_listsItsExitCodes() throws {
        func subcommands(_ path: [String]) throws -> [String] {
            let help = try pmm(path + ["--help"]).stdout
            guard let range = help.range(of: "SUBCOMMANDS:\n") else { return [] }
            // "  name   abstract", its continuation lines indented further, up to the first blank line.
            let section = help[range.upperBound...].split(separator: "\n", omittingEmptySubsequences: false).prefix { !$0.isEmpty }
            return section.compactMap { line -> String? in
                guard line.hasPrefix("  "), !line.hasPrefix("   "), let name = line.split(separator: " ").first.map(String.init),
                    name.allSatisfy({ $0.isLowercase || $0 == "-" }), name != "help"
                else { return nil }
                return name
            }
        }
        var leaves: [[String]] = []
        var queue = try subcommands([]).map { [$0] }
        while let path = queue.popLast() {
            try #require(path.count <= 3, "subcommands nest deeper than expected: \(path)")
            let children = try subcommands(path)
            if children.isEmpty { leaves.append(path) } else { queue += children.map { path + [$0] } }
        }
        #expect(leaves.count >= 20, "\(leaves)")
        for path in leaves {
            let help = try pmm(path + ["--help"]).stdout
            #expect(help.contains("Exit codes: 0"), "pmm \(path.joined(separator: " ")) --help lists no exit codes")
        }
    }

    @Test(.enabled(if: isRoot)) func diffAndApply_quiet_sayItWithTheExitCodeAlone() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let state = "--state-dir=\(dir.path)/state"
        let before = try pmm("diff", "-f", "mesh.yaml", state, "-q", in: dir.path)
        #expect(before.status == 1 && before.stdout.isEmpty, "differences, silently: \(before)")
        let dry = try pmm("apply", "-f", "mesh.yaml", state, "--dry-run", "-o", "json", in: dir.path)
        let plan = try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any]
        let creates = ((plan?["changes"] as? [String: Any])?["pipes"] as? [[String: Any]])?.filter { $0["action"] as? String == "create" }
        #expect(dry.status == 0 && plan?["dryRun"] as? Bool == true && creates?.count == 4, "\(dry.stdout)")
        let apply = try pmm("apply", "-f", "mesh.yaml", state, "--quiet", in: dir.path)
        #expect(apply.status == 0 && apply.stdout.isEmpty, "\(apply)")
        let again = try pmm("apply", "-f", "mesh.yaml", state, "-o", "json", in: dir.path)
        let nothing = try JSONSerialization.jsonObject(with: Data(again.stdout.utf8)) as? [String: Any]
        #expect(again.status == 0 && nothing?["revision"] == nil && nothing?["previous"] as? Int == 1, "idempotent: \(again.stdout)")
        let after = try pmm("diff", "-f", "mesh.yaml", state, "--quiet", in: dir.path)
        #expect(after.status == 0 && after.stdout.isEmpty, "\(after)")
        // -o yaml where kubectl has it: the same document as -o json.
        let history = try pmm("history", state, "-o", "yaml", in: dir.path)
        #expect(history.status == 0 && history.stdout.contains("revision: 1") && history.stdout.contains("specSHA256: "), "\(history.stdout)")
        let status = try pmm("status", state, "-o", "yaml", in: dir.path)
        #expect(status.status == 0 && status.stdout.contains("revision: 1"), "\(status.stdout)")
    }

    @Test func validate_quietAndJSON_forScriptsAndEditors() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let quiet = try pmm("validate", "-f", "mesh.yaml", "--quiet", in: dir.path)
        #expect(quiet.status == 0 && quiet.stdout.isEmpty && quiet.stderr.isEmpty, "\(quiet)")
        let json = try pmm("validate", "-f", "mesh.yaml", "-o", "json", in: dir.path)
        let valid = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(json.status == 0 && valid?["valid"] as? Bool == true && valid?["pipes"] as? Int == 4, "\(json.stdout)")
        dir.write(meshYAML(root: dir.root).replacingOccurrences(of: "uid: 1001", with: "uid: api"))
        #expect(try pmm("validate", "-f", "mesh.yaml", "-q", in: dir.path).status == 1)
        let bad = try pmm("validate", "-f", "mesh.yaml", "-o", "json", in: dir.path)
        let report = try JSONSerialization.jsonObject(with: Data(bad.stdout.utf8)) as? [String: Any]
        let first = (report?["diagnostics"] as? [[String: Any]])?.first
        #expect(bad.status == 1 && report?["valid"] as? Bool == false, "\(bad.stdout)")
        #expect(first?["code"] as? String == "E005" && first?["line"] as? Int == 10 && first?["column"] as? Int == 10, "\(bad.stdout)")
    }

    @Test func demo_runsTheTourAndCleansUp() throws {
        let dir = TemporaryDirectory()
        let outcome = try pmm("demo", "--dir", dir.path + "/demo")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("Applied revision 1"))
        #expect(outcome.stdout.contains("a symbolic link stands where this pipe belongs"))
        #expect(outcome.stdout.contains("Applied revision 5"))
        #expect(outcome.stdout.contains("collector-1 0/s (down)"), "the killed consumer's traffic moved")
        #expect(outcome.stdout.contains("router exited with status 0"))
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/demo"))
    }

    @Test(.enabled(if: isRoot)) func demo_runsAsANonRootUser() throws {
        let dir = TemporaryDirectory()
        chmod(dir.path, 0o777)
        // A copy of the binary the user can reach, wherever the build directory lives.
        let binary = dir.path + "/pmm"
        try installExecutable(from: pmmBinary, to: binary)
        let outcome = try run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", binary, "demo", "--dir", dir.path + "/demo"], environment: ["HOME": "/tmp"])
        #expect(outcome.status == 0, "\(outcome.stdout)\n\(outcome.stderr)")
        #expect(outcome.stdout.contains("0600 65534:65534  fifo  api.metrics.s0.in"), "a single-user mesh")
        #expect(outcome.stdout.contains("router exited with status 0"))
    }

    /// `--count` repeats `--payload`; without a payload each line of standard input is one message, so a
    /// count there would be ignored and nothing sent, with exit 0. It is refused instead (exit 64), before any
    /// pipe is opened.
    @Test func send_withACountButNoPayload_isRefused() throws {
        let outcome = try pmm("send", "--state-dir", "/nonexistent", "--data-type", "metrics", "--count", "200", stdin: "")
        #expect(outcome.status == 64, "\(outcome.stdout)\n\(outcome.stderr)")
        #expect(outcome.stderr.contains("--count repeats --payload"), "\(outcome.stderr)")
    }

    @Test func bench_runsDirectRelayAndRouted_andChecksEverySequence() throws {
        let outcome = try pmm("bench", "--count", "3000", "--producers", "2", "--consumers", "2", "-o", "json")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        let run = (report?["runs"] as? [[[String: Any]]])?.first ?? []
        #expect(run.compactMap { $0["path"] as? String } == ["direct FIFO", "routed (at-most-once)", "relay (no routing)"])
        #expect(run.allSatisfy { ($0["frames"] as? Int) == 6000 && ($0["lost"] as? Int) == 0 && ($0["duplicated"] as? Int) == 0 }, "\(run)")
        let median = report?["median"] as? [String: Double]
        #expect((median?["ratioToRelay"] ?? 0) > 0)
    }

    /// The relay runs in a process of its own by default, as the router does (`pmm bench-relay`, a child of the
    /// bench), and as a thread of the bench with `--relay thread`; either way every frame arrives once.
    @Test(arguments: ["process", "thread"])
    func bench_runsTheRelayWhereAsked(_ placement: String) throws {
        // Paced, so the relay's path lasts about a second while its children are looked at; the count marks
        // this bench among others the suite may run at the same time.
        let marker = placement == "process" ? "2999" : "2998"
        nonisolated(unsafe) var relayChildren: Set<Int32> = []
        let outcome = try run(pmmBinary, ["bench", "--count", marker, "--rate", "2000", "--relay", placement, "-o", "json"]) {
            let deadline = Date().addingTimeInterval(20)
            var benchSeen = false
            while Date() < deadline {
                let processes = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap(Int32.init) ?? []
                let bench = processes.first { processArguments($0).starts(with: [pmmBinary, "bench", "--count", marker]) }
                if bench != nil { benchSeen = true } else if benchSeen { break }
                for pid in processes where processArguments(pid).dropFirst().first == "bench-relay" && parentProcess(pid) == bench {
                    relayChildren.insert(pid)
                }
                usleep(20_000)
            }
        }
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        let run = (report?["runs"] as? [[[String: Any]]])?.first ?? []
        #expect(run.compactMap { $0["path"] as? String } == ["direct FIFO", "routed (at-most-once)", "relay (no routing)"])
        #expect(run.allSatisfy { ($0["frames"] as? Int) == Int(marker) && ($0["lost"] as? Int) == 0 && ($0["duplicated"] as? Int) == 0 }, "\(run)")
        #expect((report?["workload"] as? String)?.hasSuffix("relay in a \(placement)") == true)
        #expect(relayChildren.count == (placement == "process" ? 1 : 0), "relay processes seen: \(relayChildren)")
    }

    /// `--types` spreads the producers over data types (each stamping its pipe's type: stamped "bench", every
    /// frame was dead-lettered as misaddressed), and `--compare-workers` measures a second router with more
    /// workers in the same run, labelled with the workers it runs.
    @Test func bench_overTwoTypes_comparesOneWorkerWithTwo_andChecksEverySequence() throws {
        let outcome = try pmm(
            "bench", "--count", "3000", "--producers", "2", "--consumers", "2", "--types", "2", "--workers", "1", "--compare-workers", "2",
            "-o", "json")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        let run = (report?["runs"] as? [[[String: Any]]])?.first ?? []
        #expect(
            run.compactMap { $0["path"] as? String }
                == ["direct FIFO", "routed (at-most-once, 1 worker)", "relay (no routing)", "routed (at-most-once, 2 workers)"])
        #expect(run.allSatisfy { ($0["frames"] as? Int) == 6000 && ($0["lost"] as? Int) == 0 && ($0["duplicated"] as? Int) == 0 }, "\(run)")
        let median = report?["median"] as? [String: Double]
        #expect((median?["ratioComparedToRouted"] ?? 0) > 0)
        #expect(median?["comparedWorkers"] == 2)
    }

    /// Two router processes on loopback, one per node, linked with mutual TLS (certificates made by openssl for
    /// the run): every frame crosses, none lost, and the ratio to the one-host routed path is reported.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl"), "needs openssl (scripts/setup installs it)"))
    func benchLink_routesAcrossTwoNodesOverTLS_andReportsTheRatio() throws {
        let outcome = try pmm("bench", "--link", "--count", "3000", "-o", "json")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        let run = (report?["runs"] as? [[[String: Any]]])?.first ?? []
        #expect(run.compactMap { $0["path"] as? String }.last == "across nodes (TLS)")
        #expect(run.allSatisfy { ($0["frames"] as? Int) == 3000 && ($0["lost"] as? Int) == 0 && ($0["duplicated"] as? Int) == 0 }, "\(run)")
        let median = report?["median"] as? [String: Double]
        #expect((median?["ratioLinkedToRouted"] ?? 0) > 0)
    }

    /// `--one-core-per-node` plays two hosts of one core: the one-host router on CPU 0, node a's router on CPU 0
    /// and node b's on CPU 1, as each process's allowed CPUs say while it ran.
    @Test(.enabled(if: ProcessInfo.processInfo.activeProcessorCount >= 2, "needs two CPUs"))
    func benchLink_oneCorePerNode_runsEachNodesRouterOnItsOwnCPU() throws {
        let outcome = try pmm("bench", "--link", "--link-plaintext", "--one-core-per-node", "--count", "3000", "-o", "json")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        let run = (report?["runs"] as? [[[String: Any]]])?.first ?? []
        let cpus = Dictionary(run.compactMap { r in (r["path"] as? String).map { ($0, r["routerCPUs"] as? [String]) } }) { a, _ in a }
        #expect(cpus["routed (at-most-once)"] == ["0"], "\(run)")
        #expect(cpus["across nodes (plaintext)"] == ["0", "1"], "\(run)")
        #expect(run.allSatisfy { ($0["frames"] as? Int) == 3000 && ($0["lost"] as? Int) == 0 }, "\(run)")
        #expect((report?["workload"] as? String)?.hasSuffix("one core per node") == true)
    }

    /// `--hop-core` gives the router a core of its own (CPU 1, as its allowed CPUs say while it ran), apart from
    /// the producers and consumers; it places hops itself, so it refuses `--link`.
    @Test(.enabled(if: ProcessInfo.processInfo.activeProcessorCount >= 2, "needs two CPUs"))
    func bench_hopCore_runsTheRouterOnACoreOfItsOwn() throws {
        let outcome = try pmm("bench", "--hop-core", "--count", "3000", "-o", "json")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        let run = (report?["runs"] as? [[[String: Any]]])?.first ?? []
        let routed = run.first { ($0["path"] as? String) == "routed (at-most-once)" }
        #expect(routed?["routerCPUs"] as? [String] == ["1"], "\(run)")
        #expect(run.allSatisfy { ($0["frames"] as? Int) == 3000 && ($0["lost"] as? Int) == 0 && ($0["duplicated"] as? Int) == 0 }, "\(run)")
        #expect((report?["workload"] as? String)?.hasSuffix("the hop on a core of its own") == true)

        let refused = try pmm("bench", "--hop-core", "--link", "--count", "10")
        #expect(refused.status == 64)
        #expect(refused.stderr.contains("--hop-core: not with --one-core-per-node or --link"), "\(refused.stderr)")
    }
}

/// Files that must stay in step with the code.
@Suite struct SyncTests {
    @Test func meshSchemaJSON_matchesTheLoadersKeys() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: packageRoot + "/schemas/mesh.schema.json"))
        let schema = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let definitions = try #require(schema["$defs"] as? [String: [String: Any]])
        #expect(Set(definitions.keys) == Set(SpecKeys.byDefinition.keys))
        for (name, keys) in SpecKeys.byDefinition {
            let definition = try #require(definitions[name])
            let properties = try #require(definition["properties"] as? [String: Any])
            #expect(Set(properties.keys) == Set(keys), "$defs.\(name).properties")
            #expect(definition["additionalProperties"] as? Bool == false, "$defs.\(name) must refuse unknown keys")
        }
        let required: [String: [String]] = [
            "mesh": SpecKeys.documentRequired, "version": SpecKeys.versionRequired, "service": SpecKeys.serviceRequired,
            "binding": SpecKeys.bindingRequired, "route": SpecKeys.routeRequired, "target": SpecKeys.targetRequired,
        ]
        for (name, keys) in required {
            #expect(Set(definitions[name]?["required"] as? [String] ?? []) == Set(keys), "$defs.\(name).required")
        }
    }

    @Test func embeddedExample_matchesTheFiles() throws {
        #expect(try String(contentsOfFile: packageRoot + "/mesh.yaml.example", encoding: .utf8) == ExampleMesh.files["mesh.yaml"], "run scripts/embed-example")
        for (path, text) in ExampleMesh.files where path != "mesh.yaml" {
            #expect(try String(contentsOfFile: packageRoot + "/" + path, encoding: .utf8) == text, "run scripts/embed-example")
        }
    }
}
