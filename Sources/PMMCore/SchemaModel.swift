/// What pmm needs to know of a `.proto` file to judge compatibility: messages and enums by full name, their
/// fields by number, reservations, and where each was declared. Built from protoc's descriptors by PMMSchema;
/// pure data here, so the rules are tested without protoc.
public struct SchemaModel: Hashable, Sendable {
    /// The `.proto` file, as the spec names it.
    public var file: String
    /// Messages by full name (`shop.metrics.v1.Sample`), nested ones included (`pkg.Outer.Inner`).
    public var messages: [String: MessageSchema]
    public var enums: [String: EnumSchema]

    public init(file: String, messages: [String: MessageSchema] = [:], enums: [String: EnumSchema] = [:]) {
        self.file = file
        self.messages = messages
        self.enums = enums
    }
}

public struct MessageSchema: Hashable, Sendable {
    public var name: String
    public var fields: [Int: FieldSchema]
    public var reserved: [ClosedRange<Int>]
    public var reservedNames: [String]
    /// A synthesized `map<K, V>` entry.
    public var isMapEntry: Bool
    /// 1-based line of the declaration, when protoc gave source info.
    public var line: Int?
    /// The `.proto` file that declares it when that is an imported one; nil: the model's own file.
    public var file: String?

    public init(
        name: String, fields: [FieldSchema] = [], reserved: [ClosedRange<Int>] = [], reservedNames: [String] = [], isMapEntry: Bool = false,
        line: Int? = nil, file: String? = nil
    ) {
        self.name = name
        self.fields = Dictionary(fields.map { ($0.number, $0) }, uniquingKeysWith: { a, _ in a })
        self.reserved = reserved
        self.reservedNames = reservedNames
        self.isMapEntry = isMapEntry
        self.line = line
        self.file = file
    }

    public func reserves(_ number: Int) -> Bool { reserved.contains { $0.contains(number) } }
}

public struct FieldSchema: Hashable, Sendable {
    public enum Label: String, Hashable, Sendable {
        case optional, required, repeated
    }

    /// Protobuf scalar and composite types, as `FieldDescriptorProto.Type` names them.
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        case double, float, int64, uint64, int32, fixed64, fixed32, bool, string, group, message, bytes, uint32
        case `enum`, sfixed32, sfixed64, sint32, sint64

        /// Types that read each other's bytes correctly (buf's FIELD_WIRE_COMPATIBLE_TYPE): varints; zigzag
        /// varints; 32-bit; 64-bit; length-delimited text and bytes; nested messages (compared field by field).
        /// Between string, bytes and messages the verdict has a direction; `SchemaCompatibility` gives it.
        public var wireGroup: String {
            switch self {
            case .int32, .uint32, .int64, .uint64, .bool, .enum: "varint"
            case .sint32, .sint64: "zigzag varint"
            case .fixed32, .sfixed32: "fixed 32-bit"
            case .fixed64, .sfixed64: "fixed 64-bit"
            case .float: "float"
            case .double: "double"
            case .string, .bytes: "length-delimited"
            case .message: "message"
            case .group: "group"
            }
        }
    }

    public var number: Int
    public var name: String
    public var kind: Kind
    /// For messages and enums: the full name of the type.
    public var typeName: String?
    public var label: Label
    /// The oneof it belongs to (not proto3's synthetic `optional` oneofs).
    public var oneof: String?
    public var line: Int?

    public init(number: Int, name: String, kind: Kind, typeName: String? = nil, label: Label = .optional, oneof: String? = nil, line: Int? = nil) {
        self.number = number
        self.name = name
        self.kind = kind
        self.typeName = typeName
        self.label = label
        self.oneof = oneof
        self.line = line
    }

    /// `int64`, `repeated string`, `shop.Sample`.
    public var typeDescription: String {
        let base = typeName ?? kind.rawValue
        return label == .repeated ? "repeated \(base)" : label == .required ? "required \(base)" : base
    }
}

public struct EnumSchema: Hashable, Sendable {
    public var name: String
    public var values: [Int: String]
    public var reserved: [ClosedRange<Int>]
    public var line: Int?
    /// The `.proto` file that declares it when that is an imported one; nil: the model's own file.
    public var file: String?

    public init(name: String, values: [Int: String], reserved: [ClosedRange<Int>] = [], line: Int? = nil, file: String? = nil) {
        self.name = name
        self.values = values
        self.reserved = reserved
        self.line = line
        self.file = file
    }
}

extension SchemaModel {
    /// protoc's synthetic entry message (`LabelsEntry`: key 1, value 2) when `field` is a `map<K, V>`.
    public func mapEntry(of field: FieldSchema) -> MessageSchema? {
        guard field.label == .repeated, field.kind == .message, let type = field.typeName, let entry = messages[type], entry.isMapEntry else { return nil }
        return entry
    }

    /// `field`'s type as declared: `map<string, int64>` for a map, else `int64`, `repeated string`, `shop.Sample`.
    public func typeDescription(of field: FieldSchema) -> String {
        guard let entry = mapEntry(of: field) else { return field.typeDescription }
        let key = entry.fields[1].map { $0.typeName ?? $0.kind.rawValue } ?? "?"
        let value = entry.fields[2].map { $0.typeName ?? $0.kind.rawValue } ?? "?"
        return "map<\(key), \(value)>"
    }

    /// `field 3 'note'`, or `map field 2 'labels'`.
    public func subject(of field: FieldSchema) -> String {
        (mapEntry(of: field) == nil ? "field" : "map field") + " \(field.number) '\(field.name)'"
    }

    /// The file that declares message or enum `name`, as the spec names it.
    public func file(declaring name: String) -> String {
        messages[name]?.file ?? enums[name]?.file ?? file
    }
}

extension SchemaModel {
    /// The most bytes `message` can encode to, or -1 when unbounded (a string, bytes, repeated field, map or
    /// recursive message).
    public func maximumEncodedSize(of message: String, visiting: Set<String> = []) -> Int {
        guard let schema = messages[message], !visiting.contains(message) else { return -1 }
        var total = 0
        for field in schema.fields.values {
            if field.label == .repeated { return -1 }
            let tag = field.number < 16 ? 1 : field.number < 2048 ? 2 : field.number < 262_144 ? 3 : 5
            let value: Int
            switch field.kind {
            case .string, .bytes, .group: return -1
            case .message:
                let nested = maximumEncodedSize(of: field.typeName ?? "", visiting: visiting.union([message]))
                if nested < 0 { return -1 }
                value = nested + (nested < 128 ? 1 : nested < 16_384 ? 2 : 3)
            case .double, .fixed64, .sfixed64: value = 8
            case .float, .fixed32, .sfixed32: value = 4
            case .bool: value = 1
            case .int32, .int64, .uint64, .enum, .sint64: value = 10
            case .uint32, .sint32: value = 5
            }
            total += tag + value
        }
        return total
    }
}
