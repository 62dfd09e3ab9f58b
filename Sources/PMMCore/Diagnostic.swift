/// A position in a source file: 1-based line and column, as Yams `Mark` and compilers print them.
public struct SourceLocation: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The file as the user named it (for example `mesh.yaml`).
    public var file: String
    /// Line number, starting at 1.
    public var line: Int
    /// Column number, starting at 1, counted in Unicode scalars.
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }

    public static func < (lhs: SourceLocation, rhs: SourceLocation) -> Bool {
        (lhs.file, lhs.line, lhs.column) < (rhs.file, rhs.line, rhs.column)
    }
}

/// A path into the spec document, printed the way users read it: `services.api.produces[0].dataType`.
public struct DocumentPath: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// One step of a path: a mapping key or a sequence index.
    public enum Component: Hashable, Sendable {
        case key(String)
        case index(Int)
    }

    public var components: [Component]

    public init(_ components: [Component] = []) {
        self.components = components
    }

    /// The empty path: the document itself.
    public static let root = DocumentPath()

    /// This path extended by a mapping key.
    public func appending(_ key: String) -> DocumentPath {
        DocumentPath(components + [.key(key)])
    }

    /// This path extended by a sequence index.
    public func appending(index: Int) -> DocumentPath {
        DocumentPath(components + [.index(index)])
    }

    /// The path one step up, or nil for the root.
    public var parent: DocumentPath? {
        components.isEmpty ? nil : DocumentPath(Array(components.dropLast()))
    }

    /// Whether `self` equals `other` or lies below it.
    public func isWithin(_ other: DocumentPath) -> Bool {
        components.count >= other.components.count && Array(components.prefix(other.components.count)) == other.components
    }

    public var description: String {
        var text = ""
        for component in components {
            switch component {
            case .key(let key):
                if !text.isEmpty { text += "." }
                text += key
            case .index(let index):
                text += "[\(index)]"
            }
        }
        return text.isEmpty ? "(document)" : text
    }

    public static func < (lhs: DocumentPath, rhs: DocumentPath) -> Bool {
        lhs.description < rhs.description
    }
}

/// A stable identifier for a kind of problem. Tests and scripts match on it; the text may change.
public struct DiagnosticCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    /// The text is not YAML (libyaml's parser or scanner refused it).
    public static let yamlSyntax = DiagnosticCode(rawValue: "E001")
    /// A mapping names the same key twice.
    public static let duplicateKey = DiagnosticCode(rawValue: "E002")
    /// A key the spec does not define.
    public static let unknownKey = DiagnosticCode(rawValue: "E003")
    /// A required key is absent.
    public static let missingKey = DiagnosticCode(rawValue: "E004")
    /// A value of the wrong type (a string where an integer belongs, …).
    public static let wrongType = DiagnosticCode(rawValue: "E005")
    /// A name that breaks `[a-z][a-z0-9-]*`.
    public static let invalidName = DiagnosticCode(rawValue: "E006")
    /// A number out of its allowed range, or a value outside its enumeration.
    public static let invalidValue = DiagnosticCode(rawValue: "E007")
    /// A reference to a service, data type or version that is not declared.
    public static let unknownReference = DiagnosticCode(rawValue: "E008")
    /// Two things would share a name or a pipe path.
    public static let nameCollision = DiagnosticCode(rawValue: "E009")
    /// A root that is relative, not normalized, or a system directory.
    public static let unsafeRoot = DiagnosticCode(rawValue: "E010")
    /// A schema file named by a version does not exist.
    public static let missingSchemaFile = DiagnosticCode(rawValue: "E011")
    /// A route with no targets, or whose weights are all zero.
    public static let invalidRoute = DiagnosticCode(rawValue: "E012")
    /// `apiVersion` or `kind` that this pmm does not understand.
    public static let unsupportedDocument = DiagnosticCode(rawValue: "E013")
    /// The schema compatibility check could not run (protoc is missing).
    public static let schemaCheckUnavailable = DiagnosticCode(rawValue: "E014")
    /// Two versions of a data type differ in a way its `compatibility` forbids.
    public static let incompatibleSchema = DiagnosticCode(rawValue: "E015")
    /// A schema file protoc cannot read, or that lacks the message the spec names.
    public static let unreadableSchema = DiagnosticCode(rawValue: "E016")
    /// A file the spec names for this node (a `links.tls` certificate or key) does not exist.
    public static let missingFile = DiagnosticCode(rawValue: "E017")
    /// Frames of a multi-writer pipe can exceed PIPE_BUF, so only a writer's lock keeps them whole.
    public static let framesAbovePipeBuf = DiagnosticCode(rawValue: "W003")
    /// Two services run as the same uid, so a caller's uid cannot tell them apart.
    public static let sharedUID = DiagnosticCode(rawValue: "W001")
    /// A data type nobody produces or consumes, or a consumed type with no route.
    public static let unusedDeclaration = DiagnosticCode(rawValue: "W002")
}

/// One problem found in a spec: what, where, and what to do about it.
///
/// A value type: the loader and `validate` return arrays of these, sorted by location, and only the
/// renderer turns them into text.
public struct Diagnostic: Hashable, Sendable {
    public enum Severity: String, Hashable, Sendable {
        case error
        case warning
    }

    public var severity: Severity
    public var code: DiagnosticCode
    /// One line: what is wrong.
    public var summary: String
    /// Where in the document.
    public var path: DocumentPath
    /// Where in the file, when known.
    public var location: SourceLocation?
    /// How many columns of the offending text to underline (at least 1).
    public var span: Int
    /// Further lines: hints, "did you mean", how to fix.
    public var notes: [String]

    public init(
        _ severity: Severity,
        _ code: DiagnosticCode,
        _ summary: String,
        path: DocumentPath,
        location: SourceLocation? = nil,
        span: Int = 1,
        notes: [String] = []
    ) {
        self.severity = severity
        self.code = code
        self.summary = summary
        self.path = path
        self.location = location
        self.span = max(1, span)
        self.notes = notes
    }

    /// Orders diagnostics by position in the file, then by path, then by text, so output is stable.
    public static func sortedByLocation(_ diagnostics: [Diagnostic]) -> [Diagnostic] {
        diagnostics.sorted { a, b in
            switch (a.location, b.location) {
            case let (l?, r?) where l != r: return l < r
            case (nil, _?): return false
            case (_?, nil): return true
            default:
                if a.path != b.path { return a.path < b.path }
                return (a.code.rawValue, a.summary) < (b.code.rawValue, b.summary)
            }
        }
    }
}

extension Array where Element == Diagnostic {
    /// Whether any diagnostic is an error (warnings alone do not block).
    public var hasErrors: Bool { contains { $0.severity == .error } }
}
