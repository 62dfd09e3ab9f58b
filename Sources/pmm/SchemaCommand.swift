import ArgumentParser
import Foundation
import PMMCore
import PMMReconciler
import PMMSchema

struct SchemaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schema", abstract: "Schema versions: compatibility checks through protoc.", subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print which declared version can read which, and every incompatible change. Exit 0, 1 when incompatible, 2 on error.",
            discussion: """
                Reads each version's .proto through protoc and compares consecutive versions by the wire rules of \
                buf's WIRE category (fields matched by number, recursively; names are not on the wire, so a package \
                or message rename alone is no break). `backward`: a reader of the new version reads old data; \
                `forward`: a reader of the old version reads new data; `full`: both; `none`: versions are only read \
                by their own readers. The router sends a frame of version v only to targets whose declared version \
                can read v by this matrix.

                Each change is judged by direction: string → bytes and message → bytes are backward compatible only \
                (an old reader validates UTF-8, or parses the message); bytes → string and bytes → message forward \
                only; singular → repeated backward only (a singular reader keeps one value), repeated → singular \
                forward only; fields an old writer could set together, now in one oneof, forward only (a reader \
                keeps the oneof's last member), and fields of one oneof split apart backward only; a single field \
                moved into a new oneof is compatible. Each violation says which direction breaks and why, with the \
                .proto file and line of the field; a map field is named by its field, not its entry message.
                """ + ExitStatus.help("0 every declared version can be read as declared; 1 an incompatible change; 2 an error (protoc missing, an invalid spec)"))

        @OptionGroup var spec: SpecOptions

        @Option(name: .shortAndLong, help: "Output format: text or json.")
        var output: OutputFormat = .text

        struct Row: Encodable {
            var dataType: String
            var compatibility: String
            var versions: [Int]
            var readers: [String: [Int]]
            var violations: [Violation]
        }
        struct Violation: Encodable {
            var from: Int
            var to: Int
            var message: String
            var field: String?
            var summary: String
            var file: String
            var line: Int?
        }

        func run() throws {
            let loaded = try readSpec(spec, failure: 2, schemas: .required)
            printDiagnostics(loaded, color: useColor)
            guard let reports = loaded.schemaReports, !loaded.diagnostics.contains(where: { $0.severity == .error && $0.code != .incompatibleSchema }) else {
                throw ExitCode(2)
            }
            let rows = reports.map { report in
                Row(
                    dataType: report.dataType, compatibility: report.mode.rawValue, versions: report.versions,
                    readers: Dictionary(uniqueKeysWithValues: report.readers.map { (String($0.key), $0.value) }),
                    violations: report.violations.map {
                        Violation(from: $0.from, to: $0.to, message: $0.change.message, field: $0.change.field, summary: $0.change.summary, file: $0.change.file, line: $0.change.line)
                    })
            }
            if output == .json {
                try printJSON(rows)
            } else if reports.isEmpty {
                print("No data type declares versions.")
            } else {
                for report in reports {
                    print("\(report.dataType) (compatibility \(report.mode.rawValue)): versions \(report.versions.map(String.init).joined(separator: ", "))")
                    print("  " + "writes ↓ / read by →".padding(toLength: 22, withPad: " ", startingAt: 0) + report.versions.map { "v\($0)".padding(toLength: 5, withPad: " ", startingAt: 0) }.joined())
                    for writer in report.versions {
                        let cells = report.versions.map { reader in (report.readers[writer]?.contains(reader) ?? false) ? "yes  " : "no   " }
                        print("  " + "v\(writer)".padding(toLength: 22, withPad: " ", startingAt: 0) + cells.joined())
                    }
                    if report.versions.count < 2 {
                        print("  one version: nothing to compare")
                    } else if report.violations.isEmpty {
                        print("  every change between consecutive versions is \(report.mode.rawValue) compatible")
                    }
                    for violation in report.violations {
                        print("  v\(violation.from) → v\(violation.to): \(violation.change.message): \(violation.change.summary) (\(violation.change.file)\(violation.change.line.map { ":\($0)" } ?? ""))")
                    }
                }
            }
            if reports.contains(where: { !$0.violations.isEmpty }) { throw ExitCode(1) }
        }
    }
}
