import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMRouter
import PMMSystem
import PMMWire

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the mesh: revision, router, each instance's health and rates, dead letters, who holds each pipe.",
        discussion: """
            Reads the registry, the router's status file and /proc. Holders (pid, uid, read/write) that the spec \
            does not allow on a pipe are flagged with '!': only the producer's uid may write an ingress pipe and \
            only the consumer's uid may read an egress pipe; the router may read ingress and write egress pipes.
            """ + ExitStatus.help("0 shown, whatever the health of the mesh; 1 the state directory cannot be read"))

    @OptionGroup var state: StateOptions

    @Option(name: .shortAndLong, help: "Output format: text, json or yaml.")
    var output: StateOutputFormat = .text

    struct Report: Encodable {
        struct Holder: Encodable {
            var pipe: String
            var pid: Int32
            var uid: UInt32
            var command: String
            var access: String
            var allowed: Bool
        }
        var revision: Int?
        var appliedAt: String?
        var specSHA256: String?
        var gitCommit: String?
        var root: String?
        var routerPID: Int32?
        var routerRevision: Int?
        var router: RouterStatus?
        var deadLetters: [String: Int]
        var holders: [Holder]
        var disallowedHolders: Int
        /// Instances of `registration: required` services that hold no lease, so receive nothing.
        var notRouted: [String]
    }

    func run() throws {
        let directory = state.directory
        let current: (revision: Revision, spec: MeshSpec)?
        do {
            current = try Reconciler(state: directory, create: false).currentRevision()
        } catch {
            throw report(error, exitCode: 1, color: useColor)
        }
        let pid = directory.runningRouterPID
        let router = pid == nil ? nil : RouterStatus.read(from: directory.routerStatusPath)
        var deadLetters: [String: Int] = [:]
        for entry in DeadLetterStore.read(directory: directory.deadLetterPath) { deadLetters[entry.letter.reason, default: 0] += 1 }
        var holders: [Report.Holder] = []
        if let spec = current?.spec {
            let pipes = Dictionary(uniqueKeysWithValues: spec.desiredPipes().map { ($0.name, $0) })
            for (name, list) in PipeHolders.scan(root: spec.root).sorted(by: { $0.key < $1.key }) {
                for holder in list {
                    let pipe = pipes[name]
                    let isRouter = holder.pid == pid
                    var allowed = false
                    if let pipe {
                        switch pipe.kind {
                        case .ingress:
                            allowed = isRouter ? !holder.writes || holder.reads : (holder.uid == pipe.uid && !holder.reads)
                        case .egress:
                            allowed = isRouter ? holder.writes && !holder.reads : (holder.uid == pipe.uid && !holder.writes)
                        }
                    }
                    let access = holder.reads && holder.writes ? "read-write" : holder.reads ? "read" : "write"
                    holders.append(Report.Holder(pipe: name, pid: holder.pid, uid: holder.uid, command: holder.command, access: access, allowed: allowed))
                }
            }
        }
        let report = Report(
            revision: current?.revision.number, appliedAt: current?.revision.appliedAt, specSHA256: current?.revision.specSHA256,
            gitCommit: current?.revision.gitCommit, root: current?.spec.root, routerPID: pid, routerRevision: router?.revision,
            router: router, deadLetters: deadLetters, holders: holders, disallowedHolders: holders.count { !$0.allowed },
            notRouted: current.map { current in
                current.spec.services.filter { !$0.consumes.isEmpty }.flatMap { service in
                    service.instanceNames.filter { !current.spec.isRouted(instance: $0, of: service) }
                }
            } ?? [])
        if output != .text { return try printDocument(report, as: output) }
        print(text(report, spec: current?.spec))
    }

    func text(_ report: Report, spec: MeshSpec?) -> String {
        let r = Renderer(color: useColor)
        var lines: [String] = []
        guard let revision = report.revision, let spec else {
            return "Nothing applied yet in \(state.directory.path)."
        }
        lines.append(r.paint("Mesh \(spec.name): revision \(revision)", "1") + " applied \(report.appliedAt ?? "") (sha256 \(report.specSHA256?.prefix(12) ?? "")\(report.gitCommit.map { ", git \($0.prefix(12))" } ?? "")), root \(spec.root)")
        if let pid = report.routerPID, let router = report.router {
            let behind = router.revision < revision ? r.paint("  (behind: run pmm apply again, or send SIGHUP)", "33") : ""
            lines.append(
                "Router: pid \(pid), serving revision \(router.revision)\(behind)\(router.node.map { " on node \($0)" } ?? "")\(router.workers.map { " with \($0) workers" } ?? ""), up since \(ISO8601DateFormatter().string(from: router.startedAt))")
            if let links = router.links, !links.isEmpty {
                lines.append("")
                lines.append("LINK TO       STATE  SINCE                 PEER-REV   SENT/S      SENT     ACKED  UNACKED  RECEIVED  REROUTED")
                for link in links.sorted(by: { $0.peer < $1.peer }) {
                    let state = link.up ? r.paint("up", "32") : r.paint("down", "31")
                    let skew = link.peerRevision != 0 && link.peerRevision != UInt64(router.revision) ? r.paint("*", "33") : " "
                    lines.append(
                        [
                            pad(link.peer, 13), pad(state, 6 + (r.color ? 9 : 0)), pad(ISO8601DateFormatter().string(from: link.since), 21),
                            rpad(link.peerRevision == 0 ? "-" : String(link.peerRevision), 8) + skew, rpad(String(format: "%.0f", link.rate), 6),
                            rpad(String(link.sentFrames), 9), rpad(String(link.acknowledgedFrames), 9), rpad(String(link.unacknowledged), 8),
                            rpad(String(link.receivedFrames), 9), rpad(String(link.rerouted), 9),
                        ].joined(separator: " ") + (link.up ? "" : "  " + (link.lastError ?? "")))
                }
                if links.contains(where: { $0.peerRevision != 0 && $0.peerRevision != UInt64(router.revision) }) {
                    lines.append(r.paint("* the peer serves another revision (a rollout in progress, or a node behind)", "33"))
                }
            }
            lines.append("")
            lines.append("INSTANCE              TYPE        HEALTH    SINCE                 OUT/S    FRAMES  QUEUED  IN-PIPE  DROPPED  DEAD  STALLS")
            for egress in router.egress.sorted(by: { $0.name < $1.name }) {
                let health = egress.healthy ? r.paint("healthy", "32") : egress.stalled ? r.paint("stalled", "33") : r.paint("down", "31")
                lines.append(
                    [
                        pad(egress.instance, 21), pad(egress.dataType, 11), pad(health, 9 + (r.color ? 9 : 0)),
                        pad(ISO8601DateFormatter().string(from: egress.since), 21), rpad(String(format: "%.0f", egress.rate), 6),
                        rpad(String(egress.frames), 9), rpad(String(egress.queued), 7), rpad(String(egress.inPipe), 8),
                        rpad(String(egress.dropped), 8), rpad(String(egress.deadLettered), 5), rpad(String(egress.stalls), 7),
                    ].joined(separator: " "))
            }
            lines.append("")
            lines.append("INGRESS                        PRODUCER      IN/S    FRAMES  RESETS  MISADDRESSED  REPLAYED  SPOOLED")
            for ingress in router.ingress.sorted(by: { $0.name < $1.name }) {
                lines.append(
                    [
                        pad(ingress.name, 30), pad(ingress.producer, 12), rpad(String(format: "%.0f", ingress.rate), 6),
                        rpad(String(ingress.frames), 9), rpad(String(ingress.resets), 7), rpad(String(ingress.misaddressed), 13),
                        rpad(String(ingress.replayed), 9), rpad(String(ingress.spooledBytes), 8),
                    ].joined(separator: " "))
            }
            if !report.notRouted.isEmpty {
                lines.append(
                    "Not routed (registration: required, no lease): \(report.notRouted.joined(separator: ", ")); pmm register takes one")
            }
            if !router.waiting.isEmpty {
                lines.append("Waiting for a healthy instance: " + router.waiting.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            }
        } else {
            lines.append(r.paint("Router: not running", "31") + " (start it with pmm router)")
        }
        let dead = report.deadLetters.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
        lines.append("Dead letters: " + (dead.isEmpty ? "none" : dead.joined(separator: ", ") + " (pmm deadletters list)"))
        lines.append("Holders:" + (report.holders.isEmpty ? " none" : ""))
        for holder in report.holders {
            let mark = holder.allowed ? " " : r.paint("!", "1;31")
            lines.append("  \(mark) \(pad(holder.pipe, 30)) pid \(holder.pid) (\(holder.command), uid \(holder.uid)) \(holder.access)\(holder.allowed ? "" : r.paint("  not allowed by the spec", "31"))")
        }
        return lines.joined(separator: "\n")
    }

    func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text : text + String(repeating: " ", count: width - text.count) }
    func rpad(_ text: String, _ width: Int) -> String { text.count >= width ? text : String(repeating: " ", count: width - text.count) + text }
}
