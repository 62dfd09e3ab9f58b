import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRouter
import PMMRouterCore
import PMMSystem
import PMMWire

struct DeadLetters: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deadletters",
        abstract: "List or re-send the frames the router could not deliver.",
        discussion: """
            The router keeps every undeliverable frame in <state-dir>/deadletters/<data-type>.log with its reason: \
            no-route, misaddressed, overflow, no-healthy-instance, no-reader-for-version, discarded. Bytes in those \
            files that are not a readable letter (a torn write, a damaged disk) are reported on standard error by \
            file and byte offset and left in place; the letters before and after them are listed and replayed.
            """,
        subcommands: [List.self, Replay.self])

    struct Filter: ParsableArguments {
        @Option(help: "Only this data type.")
        var dataType: String?

        @Option(help: "Only this reason (no-route, misaddressed, overflow, no-healthy-instance, no-reader-for-version, discarded).")
        var reason: String?

        func validate() throws {
            if let reason, DeadLetterReason(rawValue: reason) == nil {
                throw ValidationError("unknown --reason \(reason); one of \(DeadLetterReason.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }

        func matches(_ letter: Pmm_V1_DeadLetter) -> Bool {
            (dataType == nil || letter.dataType == dataType) && (reason == nil || letter.reason == reason)
        }
    }

    /// Reads the spool, warning on standard error of every unreadable stretch (file and byte offset).
    static func load(_ state: StateOptions, filter: Filter) -> [DeadLetterStore.Entry] {
        let contents = DeadLetterStore.load(directory: state.directory.deadLetterPath)
        for corruption in contents.corruptions {
            printError("warning: \(corruption); the readable letters around it are kept")
        }
        return contents.entries.filter { filter.matches($0.letter) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print dead letters, oldest first.", discussion: ExitStatus.help("0 listed; 1 the state directory cannot be read", lead: false))

        @OptionGroup var state: StateOptions
        @OptionGroup var filter: Filter

        @Option(name: .shortAndLong, help: "Output format: text or json.")
        var output: OutputFormat = .text

        struct Row: Encodable {
            var at: String
            var dataType: String
            var reason: String
            var detail: String
            var pipe: String
            var source: String?
            var sequence: UInt64?
            var shardKey: String?
            var frameBytes: Int
        }

        func run() throws {
            let entries = DeadLetters.load(state, filter: filter)
            let rows = entries.map { entry in
                Row(
                    at: ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(entry.letter.atUnixNanos) / 1e9)),
                    dataType: entry.letter.dataType, reason: entry.letter.reason, detail: entry.letter.detail, pipe: entry.letter.pipe,
                    source: entry.envelope?.source, sequence: entry.envelope?.sequence,
                    shardKey: entry.envelope.map { String(decoding: $0.shardKey, as: UTF8.self) }, frameBytes: entry.letter.frame.count)
            }
            if output == .json { return try printJSON(rows) }
            guard !rows.isEmpty else { return print("No dead letters.") }
            for row in rows {
                let envelope = row.source.map { " \($0)#\(row.sequence ?? 0) key=\(row.shardKey ?? "")" } ?? " (\(row.frameBytes) raw bytes)"
                print("\(row.at)  \(row.dataType)  \(row.reason)\(envelope)  from \(row.pipe)\(row.detail.isEmpty ? "" : ": \(row.detail)")")
            }
            print("\(rows.count) dead letter\(rows.count == 1 ? "" : "s").")
        }
    }

    struct Replay: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send dead letters again through the router, then remove them from the spool.",
            discussion: """
                Each frame is written, unchanged, into the ingress pipe of the service that sent it (the envelope's \
                source), on the shard its key hashes to, so the router routes it as new. Frames without an envelope \
                (`discarded` bytes) and frames whose source no longer produces the type stay in the spool, and so \
                do unreadable bytes.
                """ + ExitStatus.help("0 replayed, or nothing to replay; 1 an error, or what was sent still sat after 5 s in a pipe no router reads (then every letter stays, to be replayed again)"))

        @OptionGroup var state: StateOptions
        @OptionGroup var filter: Filter

        @Flag(help: "Show what would be sent and send nothing.")
        var dryRun = false

        func run() throws {
            let entries = DeadLetters.load(state, filter: filter)
            guard !entries.isEmpty else { return print("No dead letters to replay.") }
            let spec = try state.appliedSpec()
            var writers: [String: IngressWriter] = [:]
            var sent: Set<Data> = []
            var skipped = 0
            for entry in entries {
                guard let envelope = entry.envelope, let dataType = spec.dataType(named: entry.letter.dataType),
                    let producer = spec.service(named: envelope.source), producer.produces.contains(where: { $0.dataType == dataType.name })
                else {
                    skipped += 1
                    continue
                }
                if dryRun {
                    print("would send \(envelope.source)#\(envelope.sequence) (\(entry.letter.reason)) into \(producer.name)'s \(dataType.name) pipe")
                    continue
                }
                let key = producer.name + "|" + dataType.name
                let writer = try writers[key] ?? IngressWriter(spec: spec, producer: producer, dataType: dataType)
                writers[key] = writer
                try writer.write(envelope)
                sent.insert(entry.letter.frame + withUnsafeBytes(of: entry.letter.atUnixNanos) { Data($0) })
            }
            if dryRun { return }
            // They leave the store only once a router took them or holds the pipe they wait in (IngressWriter.finish);
            // otherwise they stay, to be replayed again.
            var untaken = false
            for writer in writers.values {
                do { try writer.finish(timeout: 5) } catch { untaken = true }
            }
            if untaken { throw ExitCode(1) }
            for file in Set(entries.map(\.file)) {
                try DeadLetterStore.rewrite(file: file) { letter in
                    !sent.contains(letter.frame + withUnsafeBytes(of: letter.atUnixNanos) { Data($0) })
                }
            }
            print("Replayed \(sent.count) dead letter\(sent.count == 1 ? "" : "s")\(skipped > 0 ? "; \(skipped) stay (no envelope, or the source no longer produces the type)" : "").")
        }
    }
}
