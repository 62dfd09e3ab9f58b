import Foundation
import PMMCore
import PMMSpecYAML
import Testing

/// The package's root directory.
let packageRoot: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// Reads a file of the repository by its relative path.
func repositoryFile(_ relative: String) throws -> String {
    try String(contentsOfFile: packageRoot + "/" + relative, encoding: .utf8)
}

/// Loads a spec from YAML text; the test fails on any error.
func spec(yaml: String, file: String = "mesh.yaml") throws -> MeshSpec {
    let result = SpecLoader.loadAndValidate(yaml: yaml, file: file)
    #expect(!result.diagnostics.hasErrors, "\(result.diagnostics)")
    return try #require(result.spec)
}

/// Compares `actual` with the golden file `Snapshots/<name>`; with PMM_UPDATE_SNAPSHOTS=1, writes it instead.
func assertSnapshot(_ actual: String, named name: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) throws {
    let path = packageRoot + "/Tests/PMMViewsTests/Snapshots/" + name
    if ProcessInfo.processInfo.environment["PMM_UPDATE_SNAPSHOTS"] == "1" {
        try actual.write(toFile: path, atomically: true, encoding: .utf8)
        return
    }
    let expected = try String(contentsOfFile: path, encoding: .utf8)
    #expect(actual == expected, "differs from Snapshots/\(name) (PMM_UPDATE_SNAPSHOTS=1 rewrites it):\n\(actual)", sourceLocation: sourceLocation)
}

/// Runs a program to completion; returns its exit status and standard output.
func runProgram(_ path: String, _ arguments: [String], stdin: String = "") throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let input = Pipe(), output = Pipe(), error = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = error
    try process.run()
    input.fileHandleForWriting.write(Data(stdin.utf8))
    try input.fileHandleForWriting.close()
    nonisolated(unsafe) var errData = Data()
    let group = DispatchGroup()
    DispatchQueue.global().async(group: group) { errData = error.fileHandleForReading.readDataToEndOfFile() }
    let outData = output.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}
