/// The exit codes every command lists at the end of its `--help` (issue 15: CLI conventions), in one form:
/// `Exit codes: 0 …; 1 …; 64 bad arguments.` (64 is argument-parser's, for an unknown option or a missing value).
enum ExitStatus {
    /// The line to end a command's discussion with; `lead` separates it from the discussion above.
    static func help(_ codes: String, lead: Bool = true) -> String {
        (lead ? "\n\n" : "") + "Exit codes: \(codes); 64 bad arguments."
    }
}
