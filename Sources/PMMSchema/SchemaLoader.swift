import Foundation
public import PMMCore
import SwiftProtobuf

/// Why schemas could not be read.
public enum SchemaError: Error, CustomStringConvertible, Sendable, Equatable {
    /// protoc is not installed: no schema check can run.
    case protocMissing
    /// protoc refused a file (syntax, missing import, …): its own message.
    case protocFailed(file: String, message: String)
    /// The file has no message of the name the spec gives.
    case messageMissing(file: String, message: String, declared: [String])

    public var description: String {
        switch self {
        case .protocMissing:
            "protoc is not installed, so the schema compatibility check cannot run; install it with `apt-get install protobuf-compiler`"
        case .protocFailed(let file, let message): "protoc cannot read \(file): \(message)"
        case .messageMissing(let file, let message, let declared):
            "\(file) declares no message \(message)" + (declared.isEmpty ? "" : " (it declares \(declared.sorted().joined(separator: ", ")))")
        }
    }
}

/// Reads `.proto` files through protoc (Debian's protobuf-compiler) into `SchemaModel`s: protoc writes a
/// `FileDescriptorSet` with source info, read with SwiftProtobuf's descriptor types.
public enum SchemaLoader {
    /// protoc's path, or nil when it is not installed. `PMM_PROTOC` names one explicitly (and only that one).
    public static var protoc: String? {
        if let chosen = ProcessInfo.processInfo.environment["PMM_PROTOC"], !chosen.isEmpty {
            return FileManager.default.isExecutableFile(atPath: chosen) ? chosen : nil
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
            let candidate = "\(directory)/protoc"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Loads `file` (relative to `directory`, or absolute) and checks it declares `message`.
    public static func load(file: String, message: String, relativeTo directory: String) throws(SchemaError) -> SchemaModel {
        guard let protoc else { throw .protocMissing }
        let absolute = file.hasPrefix("/") ? file : directory + "/" + file
        let include = file.hasPrefix("/") ? (absolute as NSString).deletingLastPathComponent : directory
        let target = file.hasPrefix("/") ? (absolute as NSString).lastPathComponent : file
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("pmm-descriptor-\(getpid())-\(UUID().uuidString).pb").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: protoc)
        process.arguments = ["--descriptor_set_out=\(output)", "--include_imports", "--include_source_info", "-I", include, target]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        do { try process.run() } catch { throw .protocFailed(file: file, message: "\(error)") }
        let complaint = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0, let data = FileManager.default.contents(atPath: output) else {
            throw .protocFailed(file: file, message: complaint.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let set: Google_Protobuf_FileDescriptorSet
        do { set = try Google_Protobuf_FileDescriptorSet(serializedBytes: [UInt8](data)) } catch {
            throw .protocFailed(file: file, message: "unreadable descriptor set: \(error)")
        }
        let model = model(of: set, mainFile: target, named: file, include: file.hasPrefix("/") ? include : nil)
        guard model.messages[message] != nil else {
            throw .messageMissing(file: file, message: message, declared: Array(model.messages.filter { !$0.value.isMapEntry }.keys))
        }
        return model
    }

    /// Converts a descriptor set; lines come from each file's source info. `mainFile` (as protoc names it) is
    /// `named` as the spec names it; an imported file keeps protoc's name, relative to the include directory
    /// (the spec's directory, so the spec's naming too), or prefixed with `include` when that is absolute.
    static func model(of set: Google_Protobuf_FileDescriptorSet, mainFile: String, named: String, include: String? = nil) -> SchemaModel {
        var model = SchemaModel(file: named)
        for file in set.file {
            var lines: [[Int32]: Int] = [:]
            for location in file.sourceCodeInfo.location where !location.span.isEmpty {
                lines[location.path] = Int(location.span[0]) + 1
            }
            let declaredIn = file.name == mainFile ? nil : include.map { "\($0)/\(file.name)" } ?? file.name
            let prefix = file.package.isEmpty ? "" : file.package + "."
            for (index, message) in file.messageType.enumerated() {
                add(message, prefix: prefix, path: [4, Int32(index)], lines: lines, file: declaredIn, to: &model)
            }
            for (index, enumeration) in file.enumType.enumerated() {
                add(enumeration, prefix: prefix, line: lines[[5, Int32(index)]], file: declaredIn, to: &model)
            }
        }
        return model
    }

    static func add(
        _ message: Google_Protobuf_DescriptorProto, prefix: String, path: [Int32], lines: [[Int32]: Int], file: String?, to model: inout SchemaModel
    ) {
        let name = prefix + message.name
        let fields = message.field.enumerated().map { index, field -> FieldSchema in
            let oneof = field.hasOneofIndex && !field.proto3Optional && Int(field.oneofIndex) < message.oneofDecl.count
                ? message.oneofDecl[Int(field.oneofIndex)].name : nil
            let label: FieldSchema.Label = field.label == .repeated ? .repeated : field.label == .required ? .required : .optional
            let typeName = field.typeName.isEmpty ? nil : String(field.typeName.drop { $0 == "." })
            return FieldSchema(
                number: Int(field.number), name: field.name, kind: kind(field.type), typeName: typeName, label: label, oneof: oneof,
                line: lines[path + [2, Int32(index)]])
        }
        let reserved = message.reservedRange.map { Int($0.start)...Int($0.end - 1) }
        model.messages[name] = MessageSchema(
            name: name, fields: fields, reserved: reserved, reservedNames: message.reservedName, isMapEntry: message.options.mapEntry,
            line: lines[path], file: file)
        for (index, nested) in message.nestedType.enumerated() {
            add(nested, prefix: name + ".", path: path + [3, Int32(index)], lines: lines, file: file, to: &model)
        }
        for (index, enumeration) in message.enumType.enumerated() {
            add(enumeration, prefix: name + ".", line: lines[path + [4, Int32(index)]], file: file, to: &model)
        }
    }

    static func add(_ enumeration: Google_Protobuf_EnumDescriptorProto, prefix: String, line: Int?, file: String?, to model: inout SchemaModel) {
        let name = prefix + enumeration.name
        model.enums[name] = EnumSchema(
            name: name, values: Dictionary(enumeration.value.map { (Int($0.number), $0.name) }, uniquingKeysWith: { a, _ in a }),
            reserved: enumeration.reservedRange.map { Int($0.start)...Int($0.end) }, line: line, file: file)
    }

    static func kind(_ type: Google_Protobuf_FieldDescriptorProto.TypeEnum) -> FieldSchema.Kind {
        switch type {
        case .double: .double
        case .float: .float
        case .int64: .int64
        case .uint64: .uint64
        case .int32: .int32
        case .fixed64: .fixed64
        case .fixed32: .fixed32
        case .bool: .bool
        case .string: .string
        case .group: .group
        case .message: .message
        case .bytes: .bytes
        case .uint32: .uint32
        case .enum: .enum
        case .sfixed32: .sfixed32
        case .sfixed64: .sfixed64
        case .sint32: .sint32
        case .sint64: .sint64
        }
    }

    /// Loads every version of every data type of `spec` (schema paths relative to `directory`) and checks them.
    public static func check(_ spec: MeshSpec, relativeTo directory: String) throws(SchemaError) -> [SchemaReport] {
        var reports: [SchemaReport] = []
        for dataType in spec.dataTypes where !dataType.versions.isEmpty {
            var models: [Int: SchemaModel] = [:]
            for version in dataType.versions {
                models[version.version] = try load(file: version.schema, message: version.message, relativeTo: directory)
            }
            reports.append(SchemaReport.check(dataType, models: models))
        }
        return reports
    }
}
