import Foundation
import Glibc
import PMMRouter
import Testing

/// A control-socket client in Python (run as any uid through `setpriv`), speaking `pmm.v1.Request` by hand.
///
/// `python3 -c controlClient SOCKET MODE …`:
/// - `flood-no-read SECONDS`: sends GetPipeName requests for api as fast as it can and never reads; prints
///   `closed BYTES SECONDS ERRNO` when the server closes the connection, or `open BYTES SECONDS`.
/// - `pipelined N KIND [SECONDS]`: sends N requests (KIND `pipe-name:SERVICE` or `route:SERVICE`; routes
///   alternate weights 11 and 12) in one write, or spread over SECONDS, while reading the answers; prints
///   JSON {answers, ok, errors: {reason: count}, samples, seconds}.
/// - `shut-rd-routes N SERVICE`: shuts its read side, then sends N SetRoutingRule requests for SERVICE with
///   weights 1…N in one write, and waits half a second.
/// - `hog N SECONDS`: opens N connections, prints how many the server closed, and holds the rest SECONDS.
/// - `hold SECONDS`: connects, waits, sends one GetPipeName for api and prints `answered` or why not.
let controlClient = """
    import errno, json, socket, sys, threading, time

    def varint(n):
        out = bytearray()
        while True:
            b = n & 0x7f
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    def ld(num, data): return varint(num << 3 | 2) + varint(len(data)) + data
    def vi(num, v): return varint(num << 3) + varint(v)
    def frame(body): return varint(len(body)) + body
    def pipe_name(i, service):
        return frame(vi(1, i + 1) + ld(4, ld(1, b"metrics") + ld(2, b"k%d" % i) + ld(3, service.encode())))
    def route(i, service, weight):
        return frame(vi(1, i + 1) + ld(5, ld(1, b"metrics") + ld(2, service.encode()) + vi(3, weight)))

    def read_varint(buf, pos):
        shift = value = 0
        while True:
            if pos >= len(buf): return None, pos
            b = buf[pos]; pos += 1
            value |= (b & 0x7f) << shift; shift += 7
            if not b & 0x80: return value, pos

    def parse(body):
        ok, error, pos = False, "", 0
        while pos < len(body):
            key, pos = read_varint(body, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = read_varint(body, pos)
                if number == 2: ok = value == 1
            elif wire == 2:
                length, pos = read_varint(body, pos)
                if number == 3: error = body[pos:pos + length].decode()
                pos += length
            else:
                raise ValueError("wire type %d" % wire)
        return ok, error

    def connect():
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        return s

    def request(kind, i):
        what, service = kind.split(":")
        return pipe_name(i, service) if what == "pipe-name" else route(i, service, 11 + i % 2)

    mode = sys.argv[2]
    if mode == "flood-no-read":
        s = connect()
        batch = b"".join(pipe_name(i, "api") for i in range(1000))
        sent, started = 0, time.time()
        try:
            while time.time() - started < float(sys.argv[3]):
                s.sendall(batch)
                sent += len(batch)
            print("open", sent, round(time.time() - started, 3))
        except OSError as e:
            print("closed", sent, round(time.time() - started, 3), errno.errorcode.get(e.errno, e.errno))
    elif mode == "pipelined":
        n, kind = int(sys.argv[3]), sys.argv[4]
        spread = float(sys.argv[5]) if len(sys.argv) > 5 else 0
        s = connect()
        data = b"".join(request(kind, i) for i in range(n))
        def send():
            if spread == 0:
                s.sendall(data)
                return
            chunks = 20
            step = (n + chunks - 1) // chunks
            for c in range(chunks):
                s.sendall(b"".join(request(kind, i) for i in range(c * step, min(n, (c + 1) * step))))
                time.sleep(spread / chunks)
        started = time.time()
        sender = threading.Thread(target=send)
        sender.start()
        s.settimeout(60)
        buf, pos, answers, ok, errors, samples = b"", 0, 0, 0, {}, {}
        while answers < n:
            chunk = s.recv(1 << 16)
            if not chunk: break
            buf += chunk
            while True:
                length, start = read_varint(buf, pos)
                if length is None or start + length > len(buf): break
                good, error = parse(buf[start:start + length])
                pos = start + length
                answers += 1
                if good:
                    ok += 1
                else:
                    reason = error.split(":")[0]
                    errors[reason] = errors.get(reason, 0) + 1
                    samples.setdefault(reason, error)
            buf, pos = buf[pos:], 0
        sender.join()
        print(json.dumps({"answers": answers, "ok": ok, "errors": errors, "samples": samples, "seconds": time.time() - started}))
    elif mode == "shut-rd-routes":
        n, service = int(sys.argv[3]), sys.argv[4]
        s = connect()
        s.shutdown(socket.SHUT_RD)
        s.sendall(b"".join(frame(vi(1, i) + ld(5, ld(1, b"metrics") + ld(2, service.encode()) + vi(3, i))) for i in range(1, n + 1)))
        time.sleep(0.5)
        print("sent")
    elif mode == "hog":
        n, hold = int(sys.argv[3]), float(sys.argv[4])
        held = []
        for _ in range(n):
            s = connect()
            s.setblocking(False)
            held.append(s)
        time.sleep(0.5)
        closed = 0
        for s in held:
            try:
                if s.recv(1, socket.MSG_PEEK) == b"": closed += 1
            except BlockingIOError:
                pass
        print(closed, flush=True)
        time.sleep(hold)
    elif mode == "hold":
        s = connect()
        time.sleep(float(sys.argv[3]))
        s.sendall(pipe_name(0, "api"))
        s.settimeout(5)
        data = s.recv(4096)
        length, start = read_varint(data, 0)
        print("answered" if data and parse(data[start:start + length])[0] else "no answer: %r" % data)
    """

extension ControlHarness {
    var socketPath: String { mesh.dir.path + "/state/pmm.sock" }
    var registryPath: String { mesh.dir.path + "/state/registry.sqlite" }

    /// Runs `controlClient` with `arguments`, as `uid` (nil: as root).
    func client(as uid: Int? = nil, _ arguments: [String], background: (() -> Void)? = nil) throws -> Outcome {
        let python = ["/usr/bin/python3", "-c", controlClient, socketPath] + arguments
        guard let uid else { return try run(python[0], Array(python.dropFirst()), background: background) }
        return try run(
            "/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + python, environment: ["HOME": "/tmp"],
            background: background)
    }

    /// Starts `controlClient` with `arguments` as root, its output into `output` (or discarded).
    func startClient(_ arguments: [String], output: String? = nil) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", controlClient, socketPath] + arguments
        if let output {
            _ = FileManager.default.createFile(atPath: output, contents: nil)
            process.standardOutput = FileHandle(forWritingAtPath: output)
        } else {
            process.standardOutput = FileHandle.nullDevice
        }
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// `client(pipelined …)`'s JSON summary.
    func pipelined(as uid: Int? = nil, _ count: Int, _ kind: String, spreadOver seconds: Double = 0, background: (() -> Void)? = nil) throws
        -> PipelinedAnswers
    {
        let outcome = try client(as: uid, ["pipelined", String(count), kind] + (seconds > 0 ? [String(seconds)] : []), background: background)
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any], "\(outcome.stdout) \(outcome.stderr)")
        return PipelinedAnswers(
            answers: json["answers"] as? Int ?? 0, ok: json["ok"] as? Int ?? 0, errors: json["errors"] as? [String: Int] ?? [:],
            samples: json["samples"] as? [String: String] ?? [:], seconds: json["seconds"] as? Double ?? 0)
    }

    /// One value from the registry, through Python's sqlite3 (another process, as an operator would look).
    func sql(_ query: String) throws -> String {
        let outcome = try run(
            "/usr/bin/python3", ["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])", registryPath, query])
        return outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The serve process's open sockets (the listener, its clients, the runtime's own), by descriptor.
    var serveSockets: [String: String] {
        let directory = "/proc/\(serve!.processIdentifier)/fd"
        var sockets: [String: String] = [:]
        for fd in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + fd), target.hasPrefix("socket:") {
                sockets[fd] = target
            }
        }
        return sockets
    }

    /// The serve process's resident memory, in KiB.
    var serveRSS: Int {
        let status = (try? String(contentsOfFile: "/proc/\(serve!.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
}

struct PipelinedAnswers {
    var answers: Int
    var ok: Int
    var errors: [String: Int]
    var samples: [String: String]
    var seconds: Double
}

/// The control socket is 0666 by design: no local user may take `pmm serve` down, flood its logs, or starve
/// the other users.
@Suite(.enabled(if: isRoot, "needs root to run clients as other uids"), .serialized)
struct ControlLimitTests {
    /// A client that sends requests as fast as it can and never reads the answers: once more than
    /// `--reply-buffer-limit` (1 MiB) of answers are waiting, it is disconnected, with an event; the server's
    /// memory stays bounded and others are answered.
    @Test func clientThatSendsAndNeverReads_isDisconnected_othersAreAnswered() throws {
        let c = try ControlHarness()
        let rssBefore = c.serveRSS
        let flood = try c.client(["flood-no-read", "60"])
        let words = flood.stdout.split(separator: " ")
        #expect(words.first == "closed", "the server closes the connection: \(flood.stdout) \(flood.stderr)")
        let rssAfter = c.serveRSS
        #expect(rssAfter - rssBefore < 64 << 10, "serve's memory stays bounded: \(rssBefore) KiB -> \(rssAfter) KiB")
        #expect(c.serve?.isRunning == true)
        let answer = try pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api")
        #expect(answer.status == 0 && answer.stdout.contains("api.metrics.s"), "others are answered: \(answer.stderr)")
        try waitFor("the event") { c.serveLog.contains("bytes of answers unread (limit 1048576); connection closed") }
        #expect(try c.sql("select count(*) from event where kind = 'dropped'") == "1")
        print("FIGURES client that never reads: \(flood.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) (bytes sent, seconds); serve RSS \(rssBefore) -> \(rssAfter) KiB")
    }

    /// uid 1001 sends 4,000 requests over two seconds: about `--rate-burst` + `--rate-limit` × seconds are
    /// answered, the rest refused "rate limited … retry in …"; meanwhile uid 1500 and root are served at once.
    @Test func uidOverItsRate_isRefusedWithRetryIn_whileOtherUidsAreServed() throws {
        let c = try ControlHarness()
        var admin: Outcome?
        var adminTook = 0.0
        var root: Outcome?
        let flood = try c.pipelined(as: 1001, 4000, "pipe-name:api", spreadOver: 2) {
            let started = Date()
            admin = try? c.runAs(1500, "pmm", ["route", "set", c.mesh.stateArgument, "--data-type", "metrics", "--service", "canary", "--weight", "20"])
            adminTook = Date().timeIntervalSince(started)
            root = try? pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api")
        }
        #expect(flood.answers == 4000, "every request is answered: \(flood)")
        let limited = flood.errors["rate limited"] ?? 0
        #expect(flood.ok + limited == 4000, "answered or rate limited: \(flood.errors)")
        let allowance = 400 + Int(200 * (flood.seconds + 0.5))
        #expect(flood.ok >= 400 && flood.ok <= allowance, "the burst and the rate, no more: \(flood.ok) of 4000 in \(flood.seconds) s")
        let sample = flood.samples["rate limited"] ?? ""
        #expect(sample.contains("uid 1001 sent more than 200 requests/s (burst 400); retry in 0.0"), "\(sample)")
        #expect(admin?.status == 0, "uid 1500 is served meanwhile: \(admin?.stderr ?? "")")
        #expect(adminTook < 2, "and at once: \(adminTook) s")
        #expect(root?.status == 0, "root too: \(root?.stderr ?? "")")
        print(
            "FIGURES rate limit: uid 1001 sent 4000 requests in \(String(format: "%.2f", flood.seconds)) s: \(flood.ok) answered, \(limited) rate limited; uid 1500 served in \(String(format: "%.3f", adminTook)) s"
        )
    }

    /// 10,000 refused requests from one uid (refused as a stranger, then rate limited) leave a handful of
    /// events and log lines, and the summaries still account for every one of them.
    @Test func tenThousandRefusedRequests_leaveAFewEvents_thatCountEveryRefusal() throws {
        let c = try ControlHarness()
        let flood = try c.pipelined(as: 1002, 10_000, "pipe-name:api")
        #expect(flood.answers == 10_000 && flood.ok == 0, "\(flood)")
        let refused = flood.errors.filter { $0.key.hasPrefix("uid 1002 may not") }.values.reduce(0, +)
        let limited = flood.errors["rate limited"] ?? 0
        #expect(refused + limited == 10_000, "\(flood.errors)")
        let right = Int(try c.sql("select count(*) from event where kind in ('refused', 'rate-limited')")) ?? -1
        #expect(right >= 1 && right <= 2, "at first, one event per kind: \(right)")
        // When the 10 s window ends, one summary per kind says how many more there were.
        try waitFor("the summaries", timeout: 15) {
            (Int((try? c.sql("select count(*) from event where message like '%more like it%'")) ?? "") ?? 0) >= (limited > 0 ? 2 : 1)
        }
        let events = Int(try c.sql("select count(*) from event where kind in ('refused', 'rate-limited')")) ?? -1
        #expect(events <= 4, "at most two per kind: \(events)")
        func accounted(_ kind: String) throws -> Int {
            let single = Int(try c.sql("select count(*) from event where kind = '\(kind)' and message not like '%more like it%'")) ?? 0
            let more = try c.sql(
                "select coalesce(sum(cast(substr(message, instr(message, ': ') + 2, instr(message, ' more like it') - instr(message, ': ') - 2) as integer)), 0) from event where kind = '\(kind)' and message like '%more like it%'"
            )
            return single + (Int(more) ?? 0)
        }
        #expect(try accounted("refused") == refused, "every refusal is counted in an event")
        #expect(try accounted("rate-limited") == limited)
        let lines = c.serveLog.split(separator: "\n").filter { $0.contains("uid 1002") }.count
        #expect(lines <= 4, "and the log is not flooded either: \(lines) lines")
        print("FIGURES 10,000 refused requests: \(refused) refused, \(limited) rate limited; \(events) events, \(lines) log lines")
    }

    /// A client that shut its read side sends 50 routing rules in one write: the first answer fails to send,
    /// the connection is dropped then and there, the 49 requests behind it are not acted on, its descriptor
    /// is closed once, and a client connected before it is still served.
    @Test func droppedInTheMiddleOfARead_actsOnNothingMore_andClosesOnlyItsOwnDescriptor() throws {
        let c = try ControlHarness()
        let socketsBefore = c.serveSockets
        // A client connected before, which speaks after the drop.
        let heldOutput = c.mesh.dir.path + "/held.out"
        let held = try c.startClient(["hold", "1.5"], output: heldOutput)
        usleep(300_000)
        let dropped = try c.client(["shut-rd-routes", "50", "canary"])
        held.waitUntilExit()
        let heldSaid = (try? String(contentsOfFile: heldOutput, encoding: .utf8)) ?? ""
        #expect(dropped.stdout.contains("sent"), "\(dropped.stderr)")
        #expect(heldSaid.contains("answered"), "the other connection works: \(heldSaid)")
        #expect(try c.sql("select weight from routingRule where service = 'canary'") == "1", "only the first request took effect")
        #expect(try c.sql("select count(*) from event where kind = 'routing-rule'") == "1")
        try waitFor("the same sockets as before, no more, no fewer") { c.serveSockets == socketsBefore }
        let after = try pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api")
        #expect(after.status == 0, "\(after.stderr)")
    }

    /// uid 1001 opens 100 connections: past `--max-connections-per-uid` (64) they are closed at accept, and
    /// uid 1500 still connects and is served while uid 1001 holds its 64.
    @Test func uidHoggingConnections_isCappedAt64_anotherUidStillConnects() throws {
        let c = try ControlHarness()
        var admin: Outcome?
        let hog = try c.client(as: 1001, ["hog", "100", "2"]) {
            usleep(500_000)
            admin = try? c.runAs(1500, "pmm", ["route", "set", c.mesh.stateArgument, "--data-type", "metrics", "--service", "canary", "--weight", "20"])
        }
        #expect(hog.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "36", "100 - 64 closed by the server: \(hog.stdout) \(hog.stderr)")
        #expect(admin?.status == 0, "another uid is served: \(admin?.stderr ?? "")")
        try waitFor("the event") { c.serveLog.contains("uid 1001 holds 64 connections already") }
        let after = try c.runAs(1001, "pmm", ["pipe-name", c.mesh.stateArgument, "--data-type", "metrics"])
        #expect(after.status == 0, "once it lets go, uid 1001 connects again: \(after.stderr)")
        print("FIGURES connection cap: uid 1001 opened 100, the server closed \(hog.stdout.trimmingCharacters(in: .whitespacesAndNewlines)); uid 1500 served meanwhile")
    }

    /// 300 routing rules in one write make one router reload, not 300; ten SIGHUPs that arrive while serve is
    /// busy make one reload of the spec.
    @Test func manyChangesInOnePass_signalTheRouterOnce_andSIGHUPsCoalesce() throws {
        let c = try ControlHarness()
        try c.mesh.startRouter()
        try waitFor("the router serving") { c.mesh.status != nil }
        let before = c.mesh.status?.reloads ?? 0
        let rules = try c.pipelined(300, "route:canary")
        #expect(rules.ok == 300, "\(rules)")
        usleep(1_500_000)
        let reloads = (c.mesh.status?.reloads ?? 0) - before
        #expect(reloads >= 1 && reloads <= 3, "one reload per pass of serve's loop, not per rule: \(reloads)")

        // Ten SIGHUPs while serve works through 3,000 rules from 6 connections.
        let sighupLines = { c.serveLog.components(separatedBy: "SIGHUP: the spec has not changed").count - 1 }
        let rulesBefore = Int(try c.sql("select count(*) from event where kind = 'routing-rule'")) ?? 0
        let busy = try (0..<6).map { _ in try c.startClient(["pipelined", "500", "route:canary"]) }
        try waitFor("serve busy with the rules") {
            (Int((try? c.sql("select count(*) from event where kind = 'routing-rule'")) ?? "") ?? 0) > rulesBefore + 20
        }
        for _ in 0..<10 {
            kill(c.serve!.processIdentifier, SIGHUP)
            usleep(5_000)
        }
        for process in busy { process.waitUntilExit() }
        try waitFor("a reload") { sighupLines() >= 1 }
        usleep(500_000)
        #expect(sighupLines() <= 3, "ten SIGHUPs within a pass or two are one reload each pass: \(sighupLines())")
        #expect(c.serve?.isRunning == true)
        print("FIGURES coalescing: 300 rules -> \(reloads) router reload(s); 10 SIGHUPs while busy -> \(sighupLines()) reload(s)")
    }
}
