/// One difference between two versions of a message that matters on the wire.
public struct SchemaChange: Hashable, Sendable {
    /// The message (in the newer version) the change is in; nested and referenced messages are named.
    public var message: String
    public var field: String?
    public var summary: String
    /// The `.proto` file and line to look at.
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

/// The wire rules of buf's WIRE category, over `SchemaModel`s. Names are not on the wire: versions may live in
/// different packages and a message may be renamed; fields are matched by number, recursively through nested
/// and referenced messages and enums.
public enum SchemaCompatibility {
    /// Every wire-relevant change from `old`'s message `oldRoot` to `new`'s `newRoot`.
    public static func changes(old: SchemaModel, oldRoot: String, new: SchemaModel, newRoot: String) -> [SchemaChange] {
        var comparer = Comparer(old: old, new: new)
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

    struct Comparer {
        let old: SchemaModel
        let new: SchemaModel
        var changes: [SchemaChange] = []
        var visited: Set<String> = []

        mutating func add(_ message: String, field: String?, _ summary: String, line: Int?, backward: Bool = true, forward: Bool = true) {
            changes.append(
                SchemaChange(message: message, field: field, summary: summary, file: new.file, line: line, breaksBackward: backward, breaksForward: forward))
        }

        mutating func compareMessages(_ oldName: String, _ newName: String) {
            guard visited.insert(oldName + "→" + newName).inserted else { return }
            guard let before = old.messages[oldName] else { return }
            guard let after = new.messages[newName] else {
                add(newName, field: nil, "message \(newName) is not in \(new.file)", line: nil)
                return
            }
            for number in before.fields.keys.sorted() {
                let was = before.fields[number]!
                guard let now = after.fields[number] else {
                    if !after.reserves(number) {
                        add(
                            after.name, field: was.name,
                            "field \(number) '\(was.name)' was deleted without reserving its number (add `reserved \(number);`)",
                            line: after.line)
                    }
                    continue
                }
                compareFields(was, now, in: after)
            }
            for number in after.fields.keys.sorted() where before.fields[number] == nil {
                let field = after.fields[number]!
                if before.reserves(number) {
                    add(after.name, field: field.name, "field \(number) '\(field.name)' reuses a number the older version reserved", line: field.line)
                }
                if field.label == .required {
                    add(
                        after.name, field: field.name, "required field \(number) '\(field.name)' was added; older data lacks it",
                        line: field.line, backward: true, forward: false)
                }
            }
        }

        mutating func compareFields(_ was: FieldSchema, _ now: FieldSchema, in message: MessageSchema) {
            let place = "field \(now.number) '\(now.name)'"
            if (was.label == .repeated) != (now.label == .repeated) {
                add(message.name, field: now.name, "\(place) changed from \(was.typeDescription) to \(now.typeDescription)", line: now.line)
                return
            }
            if was.label != .required && now.label == .required {
                add(message.name, field: now.name, "\(place) became required; older data may lack it", line: now.line, backward: true, forward: false)
            } else if was.label == .required && now.label != .required {
                add(message.name, field: now.name, "\(place) is no longer required; older readers need it", line: now.line, backward: false, forward: true)
            }
            if was.oneof != now.oneof {
                let from = was.oneof.map { "oneof '\($0)'" } ?? "no oneof"
                let to = now.oneof.map { "oneof '\($0)'" } ?? "no oneof"
                add(message.name, field: now.name, "\(place) moved from \(from) to \(to)", line: now.line)
            }
            guard was.kind.wireGroup == now.kind.wireGroup else {
                add(
                    message.name, field: now.name,
                    "\(place) changed type from \(was.typeDescription) to \(now.typeDescription), which is not wire compatible",
                    line: now.line)
                return
            }
            if was.kind == .message, let oldType = was.typeName, let newType = now.typeName {
                compareMessages(oldType, newType)
            } else if was.kind == .enum, now.kind == .enum, let oldType = was.typeName, let newType = now.typeName {
                compareEnums(oldType, newType)
            }
        }

        mutating func compareEnums(_ oldName: String, _ newName: String) {
            guard visited.insert(oldName + "→" + newName).inserted, let before = old.enums[oldName], let after = new.enums[newName] else {
                return
            }
            for number in before.values.keys.sorted() where after.values[number] == nil && !after.reserved.contains(where: { $0.contains(number) }) {
                add(
                    after.name, field: before.values[number],
                    "enum value \(number) '\(before.values[number]!)' of \(after.name) was deleted without reserving its number",
                    line: after.line)
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
            let result = SchemaCompatibility.changes(old: old, oldRoot: a.message, new: new, newRoot: b.message)
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
