/// One difference between two versions of a message that matters on the wire.
public struct SchemaChange: Hashable, Sendable {
    /// The message (in the newer version) the change is in; nested and referenced messages are named.
    public var message: String
    public var field: String?
    /// What changed, and for a change that breaks one direction only, why and which direction still holds
    /// (`…; backward compatible only`).
    public var summary: String
    /// The `.proto` file and line to look at: the field's own line (a map's, for its keys and values), the
    /// message's for a deleted field; the file that declares the message, imported ones included.
    public var file: String
    public var line: Int?
    /// A reader of the new version cannot read data of the old one.
    public var breaksBackward: Bool
    /// A reader of the old version cannot read data of the new one.
    public var breaksForward: Bool

    /// Whether this change is a violation under `mode`.
    public func violates(_ mode: Compatibility) -> Bool {
        switch mode {
        case .none: false
        case .backward: breaksBackward
        case .forward: breaksForward
        case .full: breaksBackward || breaksForward
        }
    }
}

/// The wire rules of buf's WIRE category over `SchemaModel`s, and beyond them, each change's verdict by
/// direction: `breaksBackward` when a reader of the newer version cannot read older data, `breaksForward` when a
/// reader of the older version cannot read newer data. Names are not on the wire: versions may live in different
/// packages and a message may be renamed; fields are matched by number, recursively through nested and
/// referenced messages and enums.
///
/// | change (old → new)                                   | backward | forward |
/// |------------------------------------------------------|----------|---------|
/// | string → bytes, message → bytes                      | yes      | no: the old reader validates UTF-8 / parses the message |
/// | bytes → string, bytes → message                      | no       | yes     |
/// | within varints, zigzag varints, fixed32s, fixed64s   | yes      | yes (values cast, as protobuf documents) |
/// | any other type change                                | no       | no      |
/// | singular → repeated                                  | yes      | no: the old reader keeps one value (merges messages) |
/// | repeated → singular                                  | no       | yes     |
/// | fields the old writer could set together, now in one oneof | no | yes: the new reader keeps only the last |
/// | fields of one oneof, now apart                       | yes      | no      |
/// | a single field into a new oneof; a oneof renamed     | yes      | yes     |
/// | became required / required field added              | no       | yes     |
/// | no longer required                                   | yes      | no      |
/// | deleted without reserving; reserved number reused; enum value deleted without reserving | no | no |
///
/// A map field is named by its field (`map field 2 'labels'`), never by protoc's synthetic entry message, and
/// filed at its own line.
public enum SchemaCompatibility {
    /// Every wire-relevant change from `old`'s message `oldRoot` to `new`'s `newRoot`. With `versions`, the
    /// summaries name them (`a v1 reader`), else they say old-version and new-version.
    public static func changes(
        old: SchemaModel, oldRoot: String, new: SchemaModel, newRoot: String, versions: (old: Int, new: Int)? = nil
    ) -> [SchemaChange] {
        var comparer = Comparer(old: old, new: new, words: Words(versions))
        comparer.compareMessages(oldRoot, newRoot)
        return comparer.changes.sorted { ($0.line ?? 0, $0.summary) < ($1.line ?? 0, $1.summary) }
    }

    /// Whether a reader of version `reader` can read data written as `writer`, under `mode`, given the
    /// changes between them (`changes(old: min, new: max)`).
    public static func canRead(writer: Int, reader: Int, mode: Compatibility, changes: [SchemaChange]) -> Bool {
        if writer == reader { return true }
        switch (mode, writer < reader) {
        case (.none, _): return false
        case (.backward, true), (.full, true): return !changes.contains { $0.breaksBackward }
        case (.forward, false), (.full, false): return !changes.contains { $0.breaksForward }
        default: return false
        }
    }

    /// How summaries name the two versions, their readers and their data.
    struct Words {
        /// `a v1 reader`, `an old-version reader`.
        var oldReader: String
        var newReader: String
        /// `v1 data`, `old-version data`.
        var oldData: String
        var newData: String
        /// `v1's`, `old-version` (before a plural noun: `v1's values`, `old-version values`).
        var oldOf: String
        var newOf: String
        /// `v1's`, `the old version's` (for a oneof).
        var oldOwner: String

        init(_ versions: (old: Int, new: Int)?) {
            if let versions {
                (oldReader, newReader) = ("a v\(versions.old) reader", "a v\(versions.new) reader")
                (oldData, newData) = ("v\(versions.old) data", "v\(versions.new) data")
                (oldOf, newOf) = ("v\(versions.old)'s", "v\(versions.new)'s")
                oldOwner = "v\(versions.old)'s"
            } else {
                (oldReader, newReader) = ("an old-version reader", "a new-version reader")
                (oldData, newData) = ("old-version data", "new-version data")
                (oldOf, newOf) = ("old-version", "new-version")
                oldOwner = "the old version's"
            }
        }
    }

    /// Where a change is filed and how its summary names the field: a map's key and value are filed under the
    /// map field of the message that declares it.
    struct Place {
        var message: String
        var field: String
        /// `field 3 'note'`, `map field 2 'labels'`, `the values of map field 2 'labels'`.
        var subject: String
        var file: String
        var line: Int?
    }

    /// The verdict's closing words for a change that breaks one direction only.
    static func verdict(backward: Bool, forward: Bool) -> String {
        switch (backward, forward) {
        case (true, false): "forward compatible only"
        case (false, true): "backward compatible only"
        case (true, true): "neither backward nor forward compatible"
        case (false, false): "compatible"
        }
    }

    struct Comparer {
        let old: SchemaModel
        let new: SchemaModel
        let words: Words
        var changes: [SchemaChange] = []
        var visited: Set<String> = []

        mutating func add(_ message: String, field: String?, _ summary: String, file: String, line: Int?, backward: Bool = true, forward: Bool = true) {
            changes.append(
                SchemaChange(message: message, field: field, summary: summary, file: file, line: line, breaksBackward: backward, breaksForward: forward))
        }

        mutating func add(_ place: Place, _ summary: String, backward: Bool, forward: Bool) {
            add(place.message, field: place.field, summary, file: place.file, line: place.line, backward: backward, forward: forward)
        }

        /// A change that breaks one direction: the summary ends with the direction that still holds.
        mutating func add(_ place: Place, _ what: String, because why: String, backward: Bool, forward: Bool) {
            add(place, "\(what): \(why); \(SchemaCompatibility.verdict(backward: backward, forward: forward))", backward: backward, forward: forward)
        }

        /// `mapField`: the map field whose entry messages these are, so their changes are filed under it.
        mutating func compareMessages(_ oldName: String, _ newName: String, mapField: Place? = nil) {
            guard visited.insert(oldName + "→" + newName).inserted else { return }
            guard let before = old.messages[oldName] else { return }
            guard let after = new.messages[newName] else {
                add(newName, field: nil, "message \(newName) is not in \(new.file)", file: new.file, line: nil)
                return
            }
            let (model, file) = (new, new.file(declaring: newName))
            func place(of field: FieldSchema) -> Place {
                if let mapField, after.isMapEntry {
                    let part = field.number == 1 ? "keys" : field.number == 2 ? "values" : "entry field \(field.number) '\(field.name)'"
                    return Place(
                        message: mapField.message, field: mapField.field, subject: "the \(part) of \(mapField.subject)", file: mapField.file,
                        line: mapField.line)
                }
                return Place(message: after.name, field: field.name, subject: model.subject(of: field), file: file, line: field.line)
            }
            for number in before.fields.keys.sorted() {
                let was = before.fields[number]!
                guard let now = after.fields[number] else {
                    if !after.reserves(number) {
                        let declared = was.line.map { " (\(old.file(declaring: oldName)):\($0))" } ?? ""
                        var gone = place(of: was)
                        if mapField == nil || !after.isMapEntry { (gone.subject, gone.line) = (old.subject(of: was), after.line) }
                        let summary = "\(gone.subject) was deleted without reserving its number\(declared), so a later version may reuse it for other data"
                        add(gone, summary + "; add `reserved \(number);`", backward: true, forward: true)
                    }
                    continue
                }
                compareFields(was, now, at: place(of: now))
            }
            for number in after.fields.keys.sorted() where before.fields[number] == nil {
                let field = after.fields[number]!
                let at = place(of: field)
                if before.reserves(number) {
                    add(at, "\(at.subject) reuses a number the older version reserved", backward: true, forward: true)
                }
                if field.label == .required {
                    add(
                        at, "required \(at.subject) was added", because: "\(words.oldData) lacks it, and \(words.newReader) rejects it then", backward: true,
                        forward: false)
                }
            }
            compareOneofs(before, after, place: place(of:))
        }

        mutating func compareFields(_ was: FieldSchema, _ now: FieldSchema, at place: Place) {
            let subject = place.subject
            let oldType = old.typeDescription(of: was)
            let newType = new.typeDescription(of: now)
            if (was.label == .repeated) != (now.label == .repeated) {
                // A list reader takes a single value as a list of one; a singular reader of a list keeps one value.
                let singularToRepeated = now.label == .repeated
                let single = singularToRepeated ? was : now
                let singleType = single.typeName ?? single.kind.rawValue
                let (reader, of) = singularToRepeated ? (words.oldReader, words.newOf) : (words.newReader, words.oldOf)
                let keeps: String =
                    switch single.kind {
                    case .string, .bytes: "keeps only the last of \(of) values"
                    case .message, .group: "merges \(of) values into one"
                    default: "keeps at most the last of \(of) values (none when they are packed)"
                    }
                add(
                    place, "\(subject) changed from \(oldType) to \(newType)", because: "\(reader) of one \(singleType) \(keeps)",
                    backward: !singularToRepeated, forward: singularToRepeated)
            } else if was.label != .required && now.label == .required {
                add(
                    place, "\(subject) became required", because: "\(words.oldData) may lack it, and \(words.newReader) rejects it then", backward: true,
                    forward: false)
            } else if was.label == .required && now.label != .required {
                add(
                    place, "\(subject) is no longer required", because: "\(words.newData) may lack it, and \(words.oldReader) rejects it then", backward: false,
                    forward: true)
            }
            let (oldKind, newKind) = (was.typeName ?? was.kind.rawValue, now.typeName ?? now.kind.rawValue)
            let changed = "\(subject) changed type from \(oldKind) to \(newKind)"
            switch (was.kind, now.kind) {
            case (.string, .bytes):
                add(place, changed, because: "\(words.oldReader) validates UTF-8, so \(words.newOf) bytes may not decode", backward: false, forward: true)
            case (.bytes, .string):
                add(place, changed, because: "\(words.newReader) validates UTF-8, so \(words.oldOf) bytes may not decode", backward: true, forward: false)
            case (.message, .bytes):
                let why = "\(words.oldReader) parses \(words.newOf) bytes as \(oldKind), and they may not be one"
                add(place, changed, because: why, backward: false, forward: true)
            case (.bytes, .message):
                let why = "\(words.newReader) parses \(words.oldOf) bytes as \(newKind), and they may not be one"
                add(place, changed, because: why, backward: true, forward: false)
            case (.message, .message):
                if let oldType = was.typeName, let newType = now.typeName {
                    let isMap = new.mapEntry(of: now) != nil
                    compareMessages(oldType, newType, mapField: isMap ? place : nil)
                }
            case (.enum, .enum):
                if let oldType = was.typeName, let newType = now.typeName { compareEnums(oldType, newType) }
            case _ where was.kind.wireGroup == now.kind.wireGroup:
                break
            default:
                add(place, "\(changed), which is not wire compatible", backward: true, forward: true)
            }
        }

        /// A reader keeps only the last member of a oneof it finds, so fields the writer may set together must not
        /// share one of the reader's oneofs: backward, the new version's oneofs against the old writer; forward, the
        /// old version's against the new writer. A single field moved into a new oneof, or a oneof renamed, is safe.
        mutating func compareOneofs(_ before: MessageSchema, _ after: MessageSchema, place: (FieldSchema) -> Place) {
            for backward in [true, false] {
                let (reader, writer) = backward ? (after, before) : (before, after)
                let members = Dictionary(grouping: reader.fields.values.filter { $0.oneof != nil && writer.fields[$0.number] != nil }) { $0.oneof! }
                for (oneof, fields) in members.sorted(by: { $0.key < $1.key }) {
                    // The writer may set fields of different groups together: each of its oneofs is one group, each
                    // field outside a oneof another.
                    let byWriter = Dictionary(grouping: fields) { (field: FieldSchema) -> String in
                        guard let theirs = writer.fields[field.number]?.oneof else { return "field \(field.number)" }
                        return "oneof " + theirs
                    }
                    let groups: [[FieldSchema]] = byWriter.values.map { $0.sorted { $0.number < $1.number } }.sorted { (a: [FieldSchema], b: [FieldSchema]) in
                        a.count != b.count ? a.count > b.count : a[0].number < b[0].number
                    }
                    guard groups.count > 1 else { continue }
                    // The largest group stayed; the others moved.
                    let stayed = groups[0]
                    let moved = groups.dropFirst().flatMap { $0 }.sorted { $0.number < $1.number }
                    let first = after.fields[moved[0].number]!
                    let at = place(first)
                    let movedNames = Self.list(moved.map { after.fields[$0.number]! })
                    let stayedNames = Self.list(stayed.map { after.fields[$0.number]! })
                    let together = moved.count + stayed.count == 2 ? "both" : "them together"
                    if backward {
                        add(
                            at, "\(movedNames) \(moved.count == 1 ? "is" : "are") now in oneof '\(oneof)' with \(stayedNames)",
                            because: "\(words.oldData) may set \(together), and \(words.newReader) keeps only the last", backward: true, forward: false)
                    } else {
                        let what =
                            "\(movedNames) \(moved.count == 1 ? "is" : "are") no longer in one oneof with \(stayedNames) (\(words.oldOwner) oneof '\(oneof)')"
                        add(
                            at, what,
                            because: "\(words.newData) may set \(together), and \(words.oldReader) keeps only the last", backward: false, forward: true)
                    }
                }
            }
        }

        /// `field 1 'a'`, `fields 1 'a' and 2 'b'`, `fields 1 'a', 2 'b' and 3 'c'`.
        static func list(_ fields: [FieldSchema]) -> String {
            let names = fields.map { "\($0.number) '\($0.name)'" }
            let joined = names.count == 1 ? names[0] : names.dropLast().joined(separator: ", ") + " and " + names.last!
            return (names.count == 1 ? "field " : "fields ") + joined
        }

        mutating func compareEnums(_ oldName: String, _ newName: String) {
            guard visited.insert(oldName + "→" + newName).inserted, let before = old.enums[oldName], let after = new.enums[newName] else {
                return
            }
            for number in before.values.keys.sorted() where after.values[number] == nil && !after.reserved.contains(where: { $0.contains(number) }) {
                add(
                    after.name, field: before.values[number],
                    "enum value \(number) '\(before.values[number]!)' of \(after.name) was deleted without reserving its number",
                    file: new.file(declaring: newName), line: after.line)
            }
        }
    }
}

/// The checked compatibility of one data type's versions: who can read what, and what breaks.
public struct SchemaReport: Hashable, Sendable {
    public var dataType: String
    public var mode: Compatibility
    /// Versions in ascending order.
    public var versions: [Int]
    /// For each writer version, the reader versions that can read it.
    public var readers: [Int: [Int]]
    /// Changes between consecutive versions that violate `mode`, keyed by "v1→v2".
    public var violations: [(from: Int, to: Int, change: SchemaChange)]

    public init(dataType: String, mode: Compatibility, versions: [Int], readers: [Int: [Int]], violations: [(from: Int, to: Int, change: SchemaChange)]) {
        self.dataType = dataType
        self.mode = mode
        self.versions = versions
        self.readers = readers
        self.violations = violations
    }

    public static func == (a: SchemaReport, b: SchemaReport) -> Bool {
        a.dataType == b.dataType && a.mode == b.mode && a.versions == b.versions && a.readers == b.readers
            && a.violations.map { "\($0.from)\($0.to)\($0.change)" } == b.violations.map { "\($0.from)\($0.to)\($0.change)" }
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(dataType)
        hasher.combine(versions)
    }

    /// Checks a data type whose versions' schemas are `models` (by version number).
    public static func check(_ dataType: DataType, models: [Int: SchemaModel]) -> SchemaReport {
        let versions = dataType.versions.sorted { $0.version < $1.version }
        var readers: [Int: [Int]] = [:]
        var violations: [(Int, Int, SchemaChange)] = []
        var changeCache: [String: [SchemaChange]] = [:]
        func changes(_ a: SchemaVersion, _ b: SchemaVersion) -> [SchemaChange]? {
            guard let old = models[a.version], let new = models[b.version] else { return nil }
            let key = "\(a.version)-\(b.version)"
            if let cached = changeCache[key] { return cached }
            let result = SchemaCompatibility.changes(old: old, oldRoot: a.message, new: new, newRoot: b.message, versions: (a.version, b.version))
            changeCache[key] = result
            return result
        }
        for (index, pair) in zip(versions, versions.dropFirst()).enumerated() {
            _ = index
            for change in changes(pair.0, pair.1) ?? [] where change.violates(dataType.compatibility) {
                violations.append((pair.0.version, pair.1.version, change))
            }
        }
        for writer in versions {
            readers[writer.version] = versions.filter { reader in
                let (low, high) = writer.version <= reader.version ? (writer, reader) : (reader, writer)
                guard let found = changes(low, high) else { return writer.version == reader.version }
                return SchemaCompatibility.canRead(writer: writer.version, reader: reader.version, mode: dataType.compatibility, changes: found)
            }.map(\.version)
        }
        return SchemaReport(dataType: dataType.name, mode: dataType.compatibility, versions: versions.map(\.version), readers: readers, violations: violations)
    }
}
