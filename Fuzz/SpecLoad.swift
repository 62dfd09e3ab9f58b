// libFuzzer target: SpecLoader.loadAndValidate on arbitrary text (built with Yams, PMMCore and PMMSpecYAML
// as modules). Loading must never crash; a result without a spec must say why.
import PMMCore
import PMMSpecYAML

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSpecLoad(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let result = SpecLoader.loadAndValidate(yaml: text, file: "fuzz.yaml")
    if result.spec == nil {
        precondition(!result.diagnostics.isEmpty, "no spec and no diagnostic")
    }
    for diagnostic in result.diagnostics { _ = "\(diagnostic)" }
    return 0
}
