import PMMCore
import Testing

/// A change between v1 and v2 of `Sample` and which direction it breaks. `backward`: a v2 reader reads v1
/// data; `forward`: a v1 reader reads v2 data.
struct DirectionCase: CustomTestStringConvertible, Sendable {
    var name: String
    var old: [FieldSchema]
    var new: [FieldSchema]
    /// Messages and map entries besides `Sample`, by their names without the package (`Point`, `Sample.LabelsEntry`).
    var oldExtra: [MessageSchema] = []
    var newExtra: [MessageSchema] = []
    /// nil: no change is reported, both ways compatible.
    var summary: String?
    var breaksBackward = false
    var breaksForward = false
    /// Where the change is filed: its field and line (the message is always `shop.v2.Sample`).
    var field: String?
    var line: Int?
    var testDescription: String { name }
}

private func point(_ package: String, _ kind: FieldSchema.Kind = .int32) -> MessageSchema {
    MessageSchema(name: "\(package).Point", fields: [.init(number: 1, name: "x", kind: kind)])
}

/// protoc's synthetic entry of `map<K, V> labels`.
private func labelsEntry(_ package: String, key: FieldSchema.Kind = .string, value: FieldSchema.Kind, valueType: String? = nil) -> MessageSchema {
    MessageSchema(
        name: "\(package).Sample.LabelsEntry",
        fields: [.init(number: 1, name: "key", kind: key), .init(number: 2, name: "value", kind: value, typeName: valueType)], isMapEntry: true)
}

private func labels(_ package: String, number: Int = 1, line: Int? = 7) -> FieldSchema {
    .init(number: number, name: "labels", kind: .message, typeName: "\(package).Sample.LabelsEntry", label: .repeated, line: line)
}

let directionCases: [DirectionCase] = [
    // Length-delimited type changes: the reader of the narrower type may not decode the wider one's bytes.
    DirectionCase(
        name: "string to bytes", old: [.init(number: 3, name: "note", kind: .string)], new: [.init(number: 3, name: "note", kind: .bytes, line: 5)],
        summary: "field 3 'note' changed type from string to bytes: a v1 reader validates UTF-8, so v2's bytes may not decode; backward compatible only",
        breaksForward: true, field: "note", line: 5),
    DirectionCase(
        name: "bytes to string", old: [.init(number: 3, name: "note", kind: .bytes)], new: [.init(number: 3, name: "note", kind: .string, line: 5)],
        summary: "field 3 'note' changed type from bytes to string: a v2 reader validates UTF-8, so v1's bytes may not decode; forward compatible only",
        breaksBackward: true, field: "note", line: 5),
    DirectionCase(
        name: "message to bytes", old: [.init(number: 1, name: "at", kind: .message, typeName: "shop.v1.Point")],
        new: [.init(number: 1, name: "at", kind: .bytes, line: 4)], oldExtra: [point("shop.v1")],
        summary: "field 1 'at' changed type from shop.v1.Point to bytes: a v1 reader parses v2's bytes as shop.v1.Point, and they may not be one; backward compatible only",
        breaksForward: true, field: "at", line: 4),
    DirectionCase(
        name: "bytes to message", old: [.init(number: 1, name: "at", kind: .bytes)],
        new: [.init(number: 1, name: "at", kind: .message, typeName: "shop.v2.Point", line: 4)], newExtra: [point("shop.v2")],
        summary: "field 1 'at' changed type from bytes to shop.v2.Point: a v2 reader parses v1's bytes as shop.v2.Point, and they may not be one; forward compatible only",
        breaksBackward: true, field: "at", line: 4),
    DirectionCase(
        name: "string to message", old: [.init(number: 1, name: "at", kind: .string)],
        new: [.init(number: 1, name: "at", kind: .message, typeName: "shop.v2.Point")], newExtra: [point("shop.v2")],
        summary: "field 1 'at' changed type from string to shop.v2.Point, which is not wire compatible", breaksBackward: true, breaksForward: true),
    // Numeric changes inside one wire group stay compatible, as protobuf documents them (values cast as in C++).
    DirectionCase(name: "int32 to int64", old: [.init(number: 1, name: "n", kind: .int32)], new: [.init(number: 1, name: "n", kind: .int64)]),
    DirectionCase(name: "enum to int32", old: [.init(number: 1, name: "n", kind: .enum, typeName: "shop.v1.E")], new: [.init(number: 1, name: "n", kind: .int32)]),
    DirectionCase(
        name: "int32 to sint32", old: [.init(number: 1, name: "n", kind: .int32)], new: [.init(number: 1, name: "n", kind: .sint32)],
        summary: "field 1 'n' changed type from int32 to sint32, which is not wire compatible", breaksBackward: true, breaksForward: true),
    // Singular ↔ repeated: a repeated reader takes one value as a list of one; a singular reader of a list keeps one.
    DirectionCase(
        name: "string to repeated string", old: [.init(number: 2, name: "tag", kind: .string)],
        new: [.init(number: 2, name: "tag", kind: .string, label: .repeated, line: 6)],
        summary: "field 2 'tag' changed from string to repeated string: a v1 reader of one string keeps only the last of v2's values; backward compatible only",
        breaksForward: true, field: "tag", line: 6),
    DirectionCase(
        name: "repeated string to string", old: [.init(number: 2, name: "tag", kind: .string, label: .repeated)],
        new: [.init(number: 2, name: "tag", kind: .string, line: 6)],
        summary: "field 2 'tag' changed from repeated string to string: a v2 reader of one string keeps only the last of v1's values; forward compatible only",
        breaksBackward: true, field: "tag", line: 6),
    DirectionCase(
        name: "bytes to repeated bytes", old: [.init(number: 2, name: "blob", kind: .bytes)], new: [.init(number: 2, name: "blob", kind: .bytes, label: .repeated)],
        summary: "a v1 reader of one bytes keeps only the last of v2's values; backward compatible only", breaksForward: true),
    DirectionCase(
        name: "message to repeated message", old: [.init(number: 1, name: "at", kind: .message, typeName: "shop.v1.Point")],
        new: [.init(number: 1, name: "at", kind: .message, typeName: "shop.v2.Point", label: .repeated)], oldExtra: [point("shop.v1")], newExtra: [point("shop.v2")],
        summary: "field 1 'at' changed from shop.v1.Point to repeated shop.v2.Point: a v1 reader of one shop.v1.Point merges v2's values into one; backward compatible only",
        breaksForward: true),
    DirectionCase(
        name: "repeated message to message", old: [.init(number: 1, name: "at", kind: .message, typeName: "shop.v1.Point", label: .repeated)],
        new: [.init(number: 1, name: "at", kind: .message, typeName: "shop.v2.Point")], oldExtra: [point("shop.v1")], newExtra: [point("shop.v2")],
        summary: "a v2 reader of one shop.v2.Point merges v1's values into one; forward compatible only", breaksBackward: true),
    DirectionCase(
        name: "int32 to repeated int32", old: [.init(number: 1, name: "n", kind: .int32)], new: [.init(number: 1, name: "n", kind: .int32, label: .repeated)],
        summary: "a v1 reader of one int32 keeps at most the last of v2's values (none when they are packed); backward compatible only", breaksForward: true),
    DirectionCase(
        name: "repeated int32 to int32", old: [.init(number: 1, name: "n", kind: .int32, label: .repeated)], new: [.init(number: 1, name: "n", kind: .int32)],
        summary: "a v2 reader of one int32 keeps at most the last of v1's values (none when they are packed); forward compatible only", breaksBackward: true),
    DirectionCase(
        name: "string to repeated bytes: both changes, each with its direction", old: [.init(number: 2, name: "tag", kind: .string)],
        new: [.init(number: 2, name: "tag", kind: .bytes, label: .repeated)],
        summary: "field 2 'tag' changed type from string to bytes: a v1 reader validates UTF-8", breaksForward: true),
    // Oneofs: a reader keeps only the last member of a oneof it finds, so fields a writer may set together must
    // not share one of the reader's oneofs. Names are not on the wire.
    DirectionCase(
        name: "a single field moved into a new oneof", old: [.init(number: 1, name: "a", kind: .string)],
        new: [.init(number: 1, name: "a", kind: .string, oneof: "pick"), .init(number: 2, name: "b", kind: .int64, oneof: "pick")]),
    DirectionCase(
        name: "oneof renamed", old: [.init(number: 1, name: "a", kind: .string, oneof: "pick"), .init(number: 2, name: "b", kind: .int64, oneof: "pick")],
        new: [.init(number: 1, name: "a", kind: .string, oneof: "choice"), .init(number: 2, name: "b", kind: .int64, oneof: "choice")]),
    DirectionCase(
        name: "a field moved into an existing oneof",
        old: [.init(number: 1, name: "a", kind: .string, oneof: "pick"), .init(number: 2, name: "b", kind: .int64, oneof: "pick"), .init(number: 3, name: "c", kind: .bool)],
        new: [
            .init(number: 1, name: "a", kind: .string, oneof: "pick", line: 5), .init(number: 2, name: "b", kind: .int64, oneof: "pick", line: 6),
            .init(number: 3, name: "c", kind: .bool, oneof: "pick", line: 7),
        ],
        summary:
            "field 3 'c' is now in oneof 'pick' with fields 1 'a' and 2 'b': v1 data may set them together, and a v2 reader keeps only the last; forward compatible only",
        breaksBackward: true, field: "c", line: 7),
    DirectionCase(
        name: "two fields moved into a new oneof together", old: [.init(number: 1, name: "a", kind: .string), .init(number: 2, name: "b", kind: .int64)],
        new: [.init(number: 1, name: "a", kind: .string, oneof: "pick", line: 5), .init(number: 2, name: "b", kind: .int64, oneof: "pick", line: 6)],
        summary: "field 2 'b' is now in oneof 'pick' with field 1 'a': v1 data may set both, and a v2 reader keeps only the last; forward compatible only",
        breaksBackward: true, field: "b", line: 6),
    DirectionCase(
        name: "a field moved out of a oneof",
        old: [.init(number: 1, name: "a", kind: .string, oneof: "pick"), .init(number: 2, name: "b", kind: .int64, oneof: "pick")],
        new: [.init(number: 1, name: "a", kind: .string, oneof: "pick", line: 5), .init(number: 2, name: "b", kind: .int64, line: 7)],
        summary:
            "field 2 'b' is no longer in one oneof with field 1 'a' (v1's oneof 'pick'): v2 data may set both, and a v1 reader keeps only the last; backward compatible only",
        breaksForward: true, field: "b", line: 7),
    DirectionCase(
        name: "a new field added to an existing oneof", old: [.init(number: 1, name: "a", kind: .string, oneof: "pick")],
        new: [.init(number: 1, name: "a", kind: .string, oneof: "pick"), .init(number: 2, name: "b", kind: .int64, oneof: "pick")]),
    // Required fields.
    DirectionCase(
        name: "became required", old: [.init(number: 1, name: "a", kind: .string)], new: [.init(number: 1, name: "a", kind: .string, label: .required)],
        summary: "field 1 'a' became required: v1 data may lack it, and a v2 reader rejects it then; forward compatible only", breaksBackward: true),
    DirectionCase(
        name: "no longer required", old: [.init(number: 1, name: "a", kind: .string, label: .required)], new: [.init(number: 1, name: "a", kind: .string)],
        summary: "field 1 'a' is no longer required: v2 data may lack it, and a v1 reader rejects it then; backward compatible only", breaksForward: true),
    // Map fields are named by their field, never by protoc's synthetic entry message, at the field's line.
    DirectionCase(
        name: "map values string to bytes", old: [labels("shop.v1")], new: [labels("shop.v2")], oldExtra: [labelsEntry("shop.v1", value: .string)],
        newExtra: [labelsEntry("shop.v2", value: .bytes)],
        summary:
            "the values of map field 1 'labels' changed type from string to bytes: a v1 reader validates UTF-8, so v2's bytes may not decode; backward compatible only",
        breaksForward: true, field: "labels", line: 7),
    DirectionCase(
        name: "map values int64 to string", old: [labels("shop.v1")], new: [labels("shop.v2")], oldExtra: [labelsEntry("shop.v1", value: .int64)],
        newExtra: [labelsEntry("shop.v2", value: .string)],
        summary: "the values of map field 1 'labels' changed type from int64 to string, which is not wire compatible", breaksBackward: true, breaksForward: true,
        field: "labels", line: 7),
    DirectionCase(
        name: "map keys int32 to sint32", old: [labels("shop.v1")], new: [labels("shop.v2")], oldExtra: [labelsEntry("shop.v1", key: .int32, value: .string)],
        newExtra: [labelsEntry("shop.v2", key: .sint32, value: .string)],
        summary: "the keys of map field 1 'labels' changed type from int32 to sint32, which is not wire compatible", breaksBackward: true, breaksForward: true,
        field: "labels", line: 7),
    DirectionCase(
        name: "map to a repeated message of the same fields", old: [labels("shop.v1")],
        new: [.init(number: 1, name: "labels", kind: .message, typeName: "shop.v2.Label", label: .repeated)], oldExtra: [labelsEntry("shop.v1", value: .string)],
        newExtra: [MessageSchema(name: "shop.v2.Label", fields: [.init(number: 1, name: "key", kind: .string), .init(number: 2, name: "value", kind: .string)])]),
    DirectionCase(
        name: "map values int32 to int64", old: [labels("shop.v1")], new: [labels("shop.v2")], oldExtra: [labelsEntry("shop.v1", value: .int32)],
        newExtra: [labelsEntry("shop.v2", value: .int64)]),
    DirectionCase(
        name: "map to singular message: named as a map", old: [labels("shop.v1")],
        new: [.init(number: 1, name: "labels", kind: .message, typeName: "shop.v2.Label", line: 7)], oldExtra: [labelsEntry("shop.v1", value: .string)],
        newExtra: [MessageSchema(name: "shop.v2.Label", fields: [.init(number: 1, name: "key", kind: .string), .init(number: 2, name: "value", kind: .string)])],
        summary: "field 1 'labels' changed from map<string, string> to shop.v2.Label: a v2 reader of one shop.v2.Label merges v1's values into one",
        breaksBackward: true, field: "labels", line: 7),
    DirectionCase(
        name: "map values of a message type changed inside", old: [labels("shop.v1")], new: [labels("shop.v2")],
        oldExtra: [labelsEntry("shop.v1", value: .message, valueType: "shop.v1.Point"), point("shop.v1", .string)],
        newExtra: [labelsEntry("shop.v2", value: .message, valueType: "shop.v2.Point"), point("shop.v2", .bytes)],
        summary: "field 1 'x' changed type from string to bytes", breaksForward: true, field: "x"),
    DirectionCase(
        name: "map deleted without reserving its number", old: [.init(number: 1, name: "a", kind: .string), labels("shop.v1", number: 2, line: 5)],
        new: [.init(number: 1, name: "a", kind: .string)], oldExtra: [labelsEntry("shop.v1", value: .string)],
        summary: "map field 2 'labels' was deleted without reserving its number (shop.v1.proto:5)", breaksBackward: true, breaksForward: true,
        field: "labels"),
]

/// The verdict for a field whose type changes from `a` to `b`, written out independently of the checker.
func expectedTypeVerdict(_ a: FieldSchema.Kind, _ b: FieldSchema.Kind) -> (breaksBackward: Bool, breaksForward: Bool)? {
    let groups: [Set<FieldSchema.Kind>] = [[.int32, .uint32, .int64, .uint64, .bool, .enum], [.sint32, .sint64], [.fixed32, .sfixed32], [.fixed64, .sfixed64]]
    if a == b || groups.contains(where: { $0.contains(a) && $0.contains(b) }) { return nil }
    switch (a, b) {
    case (.string, .bytes), (.message, .bytes): return (false, true)
    case (.bytes, .string), (.bytes, .message): return (true, false)
    default: return (true, true)
    }
}

@Suite struct SchemaCompatibilityDirectionTests {
    static func models(_ c: DirectionCase) -> (SchemaModel, SchemaModel) {
        var old = schema("shop.v1", c.old, extra: c.oldExtra)
        var new = schema("shop.v2", c.new, extra: c.newExtra)
        old.enums["shop.v1.E"] = EnumSchema(name: "shop.v1.E", values: [0: "ZERO"])
        new.enums["shop.v2.E"] = EnumSchema(name: "shop.v2.E", values: [0: "ZERO"])
        return (old, new)
    }

    static func report(_ c: DirectionCase, _ mode: Compatibility) -> SchemaReport {
        let (old, new) = models(c)
        let dataType = DataType(
            name: "m", compatibility: mode,
            versions: [SchemaVersion(version: 1, schema: "shop.v1.proto", message: "shop.v1.Sample"), SchemaVersion(version: 2, schema: "shop.v2.proto", message: "shop.v2.Sample")])
        return SchemaReport.check(dataType, models: [1: old, 2: new])
    }

    @Test(arguments: directionCases)
    func verdict_saysWhichDirectionBreaksAndWhy(_ c: DirectionCase) {
        let (old, new) = Self.models(c)
        let changes = SchemaCompatibility.changes(old: old, oldRoot: "shop.v1.Sample", new: new, newRoot: "shop.v2.Sample", versions: (1, 2))
        guard let summary = c.summary else {
            #expect(changes.isEmpty, "\(changes.map(\.summary))")
            return
        }
        let change = changes.first { $0.summary.contains(summary) }
        #expect(change != nil, "\(changes.map(\.summary))")
        #expect(change?.breaksBackward == c.breaksBackward, "breaks backward")
        #expect(change?.breaksForward == c.breaksForward, "breaks forward")
        if let field = c.field { #expect(change?.field == field) }
        if let line = c.line { #expect(change?.line == line) }
        #expect(change?.file == "shop.v2.proto")
        for change in changes {
            #expect(!change.summary.contains("Entry") && !change.message.contains("Entry"), "a map is named by its field: \(change.summary)")
            if change.breaksBackward != change.breaksForward {
                #expect(change.summary.hasSuffix(change.breaksBackward ? "; forward compatible only" : "; backward compatible only"), "\(change.summary)")
            }
        }
    }

    @Test(arguments: directionCases)
    func readersAndViolations_followTheDirection(_ c: DirectionCase) {
        let backward = Self.report(c, .backward)
        #expect(backward.readers[1] == (c.breaksBackward ? [1] : [1, 2]), "under backward, a v2 reader reads v1 data unless backward breaks")
        #expect(backward.violations.isEmpty == !c.breaksBackward)
        let forward = Self.report(c, .forward)
        #expect(forward.readers[2] == (c.breaksForward ? [2] : [1, 2]), "under forward, a v1 reader reads v2 data unless forward breaks")
        #expect(forward.violations.isEmpty == !c.breaksForward)
        let full = Self.report(c, .full)
        #expect(full.violations.isEmpty == !(c.breaksBackward || c.breaksForward))
    }

    /// Every singular type to every other: the verdict of the type change alone.
    @Test(arguments: FieldSchema.Kind.allCases.filter { $0 != .group })
    func everyTypeChange_hasItsDirection(_ from: FieldSchema.Kind) {
        for to in FieldSchema.Kind.allCases where to != .group {
            func field(_ kind: FieldSchema.Kind, _ package: String) -> FieldSchema {
                .init(number: 1, name: "f", kind: kind, typeName: kind == .message ? "\(package).Point" : kind == .enum ? "\(package).E" : nil)
            }
            let c = DirectionCase(name: "\(from) to \(to)", old: [field(from, "shop.v1")], new: [field(to, "shop.v2")], oldExtra: [point("shop.v1")], newExtra: [point("shop.v2")])
            let (old, new) = Self.models(c)
            let changes = SchemaCompatibility.changes(old: old, oldRoot: "shop.v1.Sample", new: new, newRoot: "shop.v2.Sample", versions: (1, 2))
            guard let expected = expectedTypeVerdict(from, to) else {
                #expect(changes.isEmpty, "\(from) → \(to): \(changes.map(\.summary))")
                continue
            }
            #expect(changes.count == 1, "\(from) → \(to): \(changes.map(\.summary))")
            #expect(changes.first?.breaksBackward == expected.breaksBackward && changes.first?.breaksForward == expected.breaksForward, "\(from) → \(to)")
            #expect(changes.first?.summary.hasPrefix("field 1 'f' changed type from ") == true)
        }
    }

    /// Every type, singular to repeated and back: a list reader takes one value, a singular reader keeps one of a list.
    @Test(arguments: FieldSchema.Kind.allCases.filter { $0 != .group })
    func singularAndRepeated_ofEveryType(_ kind: FieldSchema.Kind) {
        let typeName: (String) -> String? = { kind == .message ? "\($0).Point" : kind == .enum ? "\($0).E" : nil }
        for (oldLabel, newLabel, breaksBackward) in [(FieldSchema.Label.optional, FieldSchema.Label.repeated, false), (.repeated, .optional, true)] {
            let c = DirectionCase(
                name: "\(kind)", old: [.init(number: 1, name: "f", kind: kind, typeName: typeName("shop.v1"), label: oldLabel)],
                new: [.init(number: 1, name: "f", kind: kind, typeName: typeName("shop.v2"), label: newLabel)], oldExtra: [point("shop.v1")], newExtra: [point("shop.v2")])
            let (old, new) = Self.models(c)
            let changes = SchemaCompatibility.changes(old: old, oldRoot: "shop.v1.Sample", new: new, newRoot: "shop.v2.Sample", versions: (1, 2))
            #expect(changes.count == 1, "\(kind) \(oldLabel) → \(newLabel): \(changes.map(\.summary))")
            #expect(changes.first?.breaksBackward == breaksBackward && changes.first?.breaksForward == !breaksBackward, "\(kind) \(oldLabel) → \(newLabel)")
        }
    }

    @Test func withoutVersions_theSummaryNamesOldAndNew() {
        let old = schema("shop.v1", [.init(number: 3, name: "note", kind: .string)])
        let new = schema("shop.v2", [.init(number: 3, name: "note", kind: .bytes)])
        let changes = SchemaCompatibility.changes(old: old, oldRoot: "shop.v1.Sample", new: new, newRoot: "shop.v2.Sample")
        #expect(changes.map(\.summary) == ["field 3 'note' changed type from string to bytes: an old-version reader validates UTF-8, so new-version bytes may not decode; backward compatible only"])
    }

    @Test func aChangeInAMessageOfAnotherFile_isFiledThere() {
        var old = schema("shop.v1", [.init(number: 1, name: "at", kind: .message, typeName: "common.v1.Point")])
        old.messages["common.v1.Point"] = MessageSchema(name: "common.v1.Point", fields: [.init(number: 1, name: "x", kind: .int32)])
        var new = schema("shop.v2", [.init(number: 1, name: "at", kind: .message, typeName: "common.v2.Point")])
        new.messages["common.v2.Point"] = MessageSchema(name: "common.v2.Point", fields: [.init(number: 1, name: "x", kind: .string, line: 4)], file: "common/v2.proto")
        let changes = SchemaCompatibility.changes(old: old, oldRoot: "shop.v1.Sample", new: new, newRoot: "shop.v2.Sample", versions: (1, 2))
        #expect(changes.count == 1)
        #expect(changes.first?.file == "common/v2.proto" && changes.first?.line == 4 && changes.first?.message == "common.v2.Point")
    }
}
