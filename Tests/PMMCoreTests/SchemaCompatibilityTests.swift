import PMMCore
import Testing

/// Builds a one-message schema: `pkg.Sample` with `fields`.
func schema(_ package: String = "shop.v1", _ fields: [FieldSchema], reserved: [ClosedRange<Int>] = [], extra: [MessageSchema] = [], enums: [EnumSchema] = []) -> SchemaModel {
    var model = SchemaModel(file: "\(package).proto")
    model.messages["\(package).Sample"] = MessageSchema(name: "\(package).Sample", fields: fields, reserved: reserved)
    for message in extra { model.messages[message.name] = message }
    for enumeration in enums { model.enums[enumeration.name] = enumeration }
    return model
}

struct CompatCase: CustomTestStringConvertible, Sendable {
    var name: String
    var old: [FieldSchema]
    var new: [FieldSchema]
    var reserved: [ClosedRange<Int>] = []
    /// nil: compatible both ways.
    var summary: String?
    var backward = true
    var forward = true
    var testDescription: String { name }
}

let compatCases: [CompatCase] = [
    CompatCase(name: "field added", old: [.init(number: 1, name: "a", kind: .int64)], new: [.init(number: 1, name: "a", kind: .int64), .init(number: 2, name: "b", kind: .string)]),
    CompatCase(name: "field renamed", old: [.init(number: 1, name: "a", kind: .int64)], new: [.init(number: 1, name: "renamed", kind: .int64)]),
    CompatCase(name: "int32 to int64", old: [.init(number: 1, name: "a", kind: .int32)], new: [.init(number: 1, name: "a", kind: .int64)]),
    CompatCase(name: "fixed32 to sfixed32", old: [.init(number: 1, name: "a", kind: .fixed32)], new: [.init(number: 1, name: "a", kind: .sfixed32)]),
    CompatCase(name: "deleted, number reserved", old: [.init(number: 1, name: "a", kind: .int64), .init(number: 2, name: "b", kind: .string)], new: [.init(number: 1, name: "a", kind: .int64)], reserved: [2...2]),
    CompatCase(
        name: "deleted without reserving", old: [.init(number: 1, name: "a", kind: .int64), .init(number: 2, name: "b", kind: .string)],
        new: [.init(number: 1, name: "a", kind: .int64)], summary: "field 2 'b' was deleted without reserving its number"),
    CompatCase(
        name: "int64 to string", old: [.init(number: 1, name: "a", kind: .int64)], new: [.init(number: 1, name: "a", kind: .string)],
        summary: "field 1 'a' changed type from int64 to string, which is not wire compatible"),
    CompatCase(
        name: "int32 to sint32", old: [.init(number: 1, name: "a", kind: .int32)], new: [.init(number: 1, name: "a", kind: .sint32)],
        summary: "changed type from int32 to sint32"),
    CompatCase(
        name: "double to float", old: [.init(number: 1, name: "a", kind: .double)], new: [.init(number: 1, name: "a", kind: .float)],
        summary: "changed type from double to float"),
    CompatCase(
        name: "required added", old: [.init(number: 1, name: "a", kind: .string)],
        new: [.init(number: 1, name: "a", kind: .string), .init(number: 2, name: "b", kind: .int32, label: .required)],
        summary: "required field 2 'b' was added", backward: true, forward: false),
    CompatCase(
        name: "required dropped", old: [.init(number: 1, name: "a", kind: .string, label: .required)], new: [.init(number: 1, name: "a", kind: .string)],
        summary: "is no longer required", backward: false, forward: true),
]

@Suite struct SchemaCompatibilityTests {
    @Test(arguments: compatCases)
    func changes_followTheWireRules(_ c: CompatCase) {
        let old = schema("shop.v1", c.old)
        let new = schema("shop.v2", c.new, reserved: c.reserved)
        let changes = SchemaCompatibility.changes(old: old, oldRoot: "shop.v1.Sample", new: new, newRoot: "shop.v2.Sample")
        guard let summary = c.summary else {
            #expect(changes.isEmpty, "\(changes.map(\.summary))")
            return
        }
        let change = changes.first { $0.summary.contains(summary) }
        #expect(change != nil, "\(changes.map(\.summary))")
        #expect(change?.breaksBackward == c.backward && change?.breaksForward == c.forward)
        #expect(change?.message == "shop.v2.Sample" && change?.file == "shop.v2.proto")
    }

    @Test func changes_recurseIntoReferencedMessagesAcrossPackages() {
        let oldInner = MessageSchema(name: "a.Point", fields: [.init(number: 1, name: "x", kind: .int32)])
        let newInner = MessageSchema(name: "b.Coordinate", fields: [.init(number: 1, name: "x", kind: .string, line: 12)], line: 10)
        let old = schema("a", [.init(number: 1, name: "at", kind: .message, typeName: "a.Point")], extra: [oldInner])
        let new = schema("b", [.init(number: 1, name: "at", kind: .message, typeName: "b.Coordinate")], extra: [newInner])
        let changes = SchemaCompatibility.changes(old: old, oldRoot: "a.Sample", new: new, newRoot: "b.Sample")
        #expect(changes.count == 1)
        #expect(changes.first?.message == "b.Coordinate" && changes.first?.line == 12)
    }

    @Test func changes_ofEnums_deletingAValueWithoutReservingIt() {
        let old = schema("a", [.init(number: 1, name: "s", kind: .enum, typeName: "a.State")], enums: [EnumSchema(name: "a.State", values: [0: "UNKNOWN", 1: "ON", 2: "OFF"])])
        let new = schema("b", [.init(number: 1, name: "s", kind: .enum, typeName: "b.State")], enums: [EnumSchema(name: "b.State", values: [0: "UNKNOWN", 1: "ON"])])
        let changes = SchemaCompatibility.changes(old: old, oldRoot: "a.Sample", new: new, newRoot: "b.Sample")
        #expect(changes.map(\.summary) == ["enum value 2 'OFF' of b.State was deleted without reserving its number"])
    }

    @Test func changes_recursiveMessagesTerminate() {
        let node = MessageSchema(name: "a.Sample", fields: [.init(number: 1, name: "next", kind: .message, typeName: "a.Sample")])
        var model = SchemaModel(file: "a.proto")
        model.messages["a.Sample"] = node
        #expect(SchemaCompatibility.changes(old: model, oldRoot: "a.Sample", new: model, newRoot: "a.Sample").isEmpty)
    }

    @Test(arguments: [
        (Compatibility.none, [1: [1], 2: [2]]), (.backward, [1: [1, 2], 2: [2]]), (.forward, [1: [1], 2: [1, 2]]), (.full, [1: [1, 2], 2: [1, 2]]),
    ])
    func report_readersFollowTheMode(_ mode: Compatibility, _ expected: [Int: [Int]]) {
        let dataType = DataType(
            name: "m", compatibility: mode,
            versions: [SchemaVersion(version: 1, schema: "v1.proto", message: "shop.v1.Sample"), SchemaVersion(version: 2, schema: "v2.proto", message: "shop.v2.Sample")])
        let models = [
            1: schema("shop.v1", [.init(number: 1, name: "a", kind: .int64)]),
            2: schema("shop.v2", [.init(number: 1, name: "a", kind: .int64), .init(number: 2, name: "b", kind: .string)]),
        ]
        let report = SchemaReport.check(dataType, models: models)
        #expect(report.readers == expected)
        #expect(report.violations.isEmpty)
    }

    @Test func report_flagsViolationsOnlyUnderTheDeclaredMode() {
        let models = [
            1: schema("shop.v1", [.init(number: 1, name: "a", kind: .string)]),
            2: schema("shop.v2", [.init(number: 1, name: "a", kind: .string), .init(number: 2, name: "b", kind: .int32, label: .required)]),
        ]
        func check(_ mode: Compatibility) -> SchemaReport {
            SchemaReport.check(
                DataType(name: "m", compatibility: mode, versions: [.init(version: 1, schema: "1", message: "shop.v1.Sample"), .init(version: 2, schema: "2", message: "shop.v2.Sample")]),
                models: models)
        }
        #expect(check(.backward).violations.count == 1)
        #expect(check(.forward).violations.isEmpty, "a required field added breaks only readers of the new version")
        #expect(check(.full).violations.count == 1)
        #expect(check(.none).violations.isEmpty)
        #expect(check(.forward).readers[2] == [1, 2])
    }

    @Test func maximumEncodedSize_isBoundedOnlyForFixedFields() {
        let fixed = schema("a", [.init(number: 1, name: "x", kind: .double), .init(number: 2, name: "n", kind: .int32)])
        #expect(fixed.maximumEncodedSize(of: "a.Sample") == 1 + 8 + 1 + 10)
        let text = schema("a", [.init(number: 1, name: "s", kind: .string)])
        #expect(text.maximumEncodedSize(of: "a.Sample") == -1)
    }
}
