import Foundation
import PMMCore
import PMMRouterCore
import PMMSpecYAML
import PMMWire
import SwiftProtobuf

/// A deterministic stand-in for everything around the router core: FIFOs with a capacity (by inode, so a
/// replaced pipe is a new object under the old name), producers, consumers that read at a chosen pace, die,
/// stall and come back, spool files and a dead-letter spool that survive a router crash, and a clock that moves
/// only when told. It plays the shell: it performs the core's actions exactly as `Router` does with syscalls.
///
/// It also keeps the model the checker uses: every frame produced (by a unique id in its payload), where each
/// went (delivered to which instance, dead-lettered, lost with the garbage of a reset, or in the router's
/// memory when it crashed, for at-most-once types).
struct SimWorld {
    // MARK: The operating system

    final class FIFO {
        let inode: UInt64
        let name: String
        var bytes: [UInt8] = []
        var capacity: Int
        /// Readers holding it open (the router for ingress; the consumer for egress).
        var readers = 0
        /// Writers holding it open (producers for ingress; the router for egress).
        var writers = 0
        init(inode: UInt64, name: String, capacity: Int) {
            self.inode = inode
            self.name = name
            self.capacity = capacity
        }
        var room: Int { capacity - bytes.count }
    }

    var fifos: [String: FIFO] = [:]
    var nextInode: UInt64 = 1
    /// The router's descriptors: which FIFO object each identifier holds.
    var ingressFDs: [PipeID: FIFO] = [:]
    var egressFDs: [PipeID: FIFO] = [:]
    /// Spool files by pipe: bytes and the watermark written at the last checkpoint. Survive a crash.
    final class Disk {
        var files: [String: (bytes: [UInt8], mark: Int64)] = [:]
        /// The inode each spool was last filled from and its source boundaries, as the mark file records them.
        var sources: [String: UInt64] = [:]
        var cuts: [String: [SpoolLedger.Cut]] = [:]
        /// The inode each pipe name has now (set by the world before a restart).
        var current: [String: UInt64] = [:]
        /// As the shell opens a live pipe's spool: with the inode the pipe has now.
        func open(_ pipe: String) -> SpoolLedger? { open(pipe, adopting: false) }

        /// As SpoolFile.open: with the pipe's inode, or without a source (`adopting`, a change of source at the
        /// end); a new source is written to the mark at once, with the change it makes.
        func open(_ pipe: String, adopting: Bool) -> SpoolLedger? {
            let file = files[pipe] ?? ([], 0)
            files[pipe] = file
            var ledger = SpoolLedger(pipe: pipe, size: Int64(file.bytes.count), mark: file.mark, cuts: cuts[pipe] ?? [])
            let source = adopting ? 0 : current[pipe] ?? 0
            if adopting || (sources[pipe] != nil && sources[pipe] != current[pipe]) { ledger.sourceChanged() }
            if sources[pipe] != (adopting ? 0 : current[pipe]) {
                sources[pipe] = source
                cuts[pipe] = ledger.cuts
            }
            return ledger
        }
    }
    let disk = Disk()
    var spoolFiles: [String: (bytes: [UInt8], mark: Int64)] {
        get { disk.files }
        set { disk.files = newValue }
    }

    // MARK: The router

    var core: RouterCore
    var options: RouterCoreOptions
    var spec: MeshSpec
    var revision = 1
    var now: UInt64 = 1_000_000_000
    /// Consumer opens so far (the shell hears three of every four, as through inotify).
    var opensSeen = 0
    var crashes = 0
    /// Draws whether each read of an at-most-once pipe is a peek instead (`Router.peekIngress`): tee, route, then
    /// splice runs into consumers' pipes and drop the rest. nil: never (the regression seeds' first replay).
    var peekRandom: SimRandom?
    /// Draws whether each read-back of a spool moves its runs with splice (`Router.spliceBack`); nil: never.
    var spliceBackRandom: SimRandom?
    /// Bytes moved by peeks' splices.
    var splicedBytes = 0

    // MARK: Services

    struct Consumer {
        var alive = true
        /// Reads nothing while set (a stalled consumer).
        var paused = false
        /// The FIFO it holds open, if alive.
        var fifo: FIFO?
        /// Bytes read and not yet a whole frame.
        var partial: [UInt8] = []
    }
    var consumers: [String: Consumer] = [:]

    // MARK: The model

    enum Fate: Equatable {
        case inFlight
        case deadLettered(DeadLetterReason)
        case discarded
        case lostInCrash
        /// In a pipe that apply unlinked, whose producer had closed it, when the router died: the kernel drops
        /// a FIFO's bytes once nobody holds it open. No router can read them (README: at-least-once starts when
        /// the frame is in the spool).
        case lostWithUnlinkedPipe
    }
    struct Sent {
        var dataType: String
        var key: [UInt8]
        var atLeastOnce: Bool
        var pipe: String
        var fate: Fate = .inFlight
    }
    var sent: [UInt64: Sent] = [:]
    var nextFrameID: UInt64 = 1
    /// Deliveries: frame id -> instances (egress pipe names) that read it whole, in order.
    var delivered: [UInt64: [String]] = [:]
    /// Per egress pipe, the frame ids read, in order.
    var readOrder: [String: [UInt64]] = [:]
    var violations: [String] = []
    /// `drop-oldest` drops the core counted, across crashes.
    var droppedBeforeCrashes: UInt64 = 0
    var log: [String] = []
    /// Live spool bytes a restarted router found (its marks lag its watermarks by up to a checkpoint).
    var spoolLiveAtRestart: Int64 = 0
    let traceActions = ProcessInfo.processInfo.environment["PMM_SIM_ACTIONS"] != nil

    static let marker: [UInt8] = Array("PMMSIM".utf8)

    init(spec: MeshSpec, options: RouterCoreOptions) {
        self.spec = spec
        self.options = options
        let layout = RouterLayout(spec: spec, revision: 1)
        core = RouterCore(layout: layout, options: options, now: now, seed: 42)
        for pipe in layout.ingress { makeFIFO(pipe.name, capacity: 65_536).writers = 1 }
        for pipe in layout.egress { makeFIFO(pipe.name, capacity: 65_536) }
        // Spools: the core was made before the files; make it again now that they can be opened.
        disk.current = fifos.mapValues(\.inode)
        core = RouterCore(layout: layout, options: options, now: now, seed: 42, openSpool: disk.open)
        for name in layout.egress.map(\.name) { startConsumer(name) }
        perform()
    }

    @discardableResult
    mutating func makeFIFO(_ name: String, capacity: Int) -> FIFO {
        let fifo = FIFO(inode: nextInode, name: name, capacity: capacity)
        nextInode += 1
        fifos[name] = fifo
        return fifo
    }


    // MARK: Shell: performing actions

    mutating func perform() {
        var guardCount = 0
        while true {
            let actions = core.takeActions()
            if actions.isEmpty { return }
            guardCount += 1
            if guardCount > 10_000 {
                violations.append("actions never settle")
                return
            }
            for action in actions { perform(action) }
        }
    }

    mutating func perform(_ action: RouterAction) {
        if traceActions {
            switch action {
            case .deadLetter(let record): print("ACTION deadLetter \(record.reason) \(record.detail) ids \(Self.frameIDs(in: record.bytes))")
            case .resetIngress(let id, let pending, let spooled, _, let error):
                print("ACTION reset \(id) pending \(pending.count) ids \(Self.frameIDs(in: pending)) spooled \(String(describing: spooled)) \(error)")
            default: print("ACTION \(action)")
            }
        }
        switch action {
        case .openIngress(let id, let name, _):
            guard let fifo = fifos[name] else {
                core.ingressUnavailable(id, missing: true, error: "missing")
                return
            }
            if let old = ingressFDs[id] {
                if let slot = core.ingressSlot(id), core.spool(of: slot) != nil { spliceAll(from: old, slot: slot) }
                old.readers -= 1
            }
            if let old = ingressFDs[id], old !== fifo, let slot = core.ingressSlot(id), let ledger = core.spool(of: slot) {
                core.spoolSourceChanged(slot)
                disk.sources[ledger.pipe] = fifo.inode
                disk.cuts[ledger.pipe] = core.spool(of: slot)!.cuts
            }
            fifo.readers += 1
            ingressFDs[id] = fifo
            core.ingressOpened(id)
        case .moveIngress(let from, let to):
            ingressFDs[to] = ingressFDs.removeValue(forKey: from)
        case .closeIngress(let id):
            if let fifo = ingressFDs.removeValue(forKey: id) {
                fifo.readers -= 1
                if fifo.readers == 0 && !fifo.bytes.isEmpty {
                    // Closing the last read end: writers get EPIPE; what was in the pipe is gone. The router
                    // only closes a pipe it drained, so this is a loss.
                    violations.append("closed ingress \(fifo.name) with \(fifo.bytes.count) bytes unread")
                }
            }
        case .resetIngress(let id, let pending, let spooled, _, _):
            var discarded = pending
            if let spooled, let slot = core.ingressSlot(id), let ledger = core.spool(of: slot) {
                discarded += spoolFiles[ledger.pipe]!.bytes[Int(spooled.lowerBound)..<Int(spooled.upperBound)]
            }
            if let fifo = ingressFDs[id] {
                discarded += fifo.bytes.prefix(1 << 20)
                fifo.bytes.removeFirst(min(fifo.bytes.count, 1 << 20))
            }
            for frameID in Self.frameIDs(in: discarded) where sent[frameID]?.fate == .inFlight { sent[frameID]?.fate = .discarded }
            // The shell writes the mark at once after a reset of a spooled pipe.
            if let slot = core.ingressSlot(id), let ledger = core.spool(of: slot) {
                disk.cuts[ledger.pipe] = ledger.cuts
                spoolFiles[ledger.pipe]!.mark = ledger.watermark
            }
        case .openEgress(let id, let name, _):
            guard let fifo = fifos[name] else {
                core.egressUnavailable(id, .missing, now: now)
                return
            }
            guard fifo.readers > 0 else {
                core.egressUnavailable(id, .noReader, now: now)
                return
            }
            if let old = egressFDs[id] { release(egress: old) }
            fifo.writers += 1
            egressFDs[id] = fifo
            core.egressOpened(id, now: now)
        case .closeEgress(let id):
            if let fifo = egressFDs.removeValue(forKey: id) { release(egress: fifo) }
        case .deadLetter(let record):
            let ids = Self.frameIDs(in: record.bytes)
            if record.reason != .discarded && ids.count != 1 {
                violations.append("dead letter \(record.reason) holds \(ids.count) frames (\(record.bytes.count) bytes, \(record.detail), first \(record.bytes.prefix(24)))")
            }
            for frameID in ids {
                guard let frame = sent[frameID] else { continue }
                if frame.fate == .inFlight || delivered[frameID] != nil || frame.fate == .lostInCrash {
                    sent[frameID]?.fate = record.reason == .discarded ? .discarded : .deadLettered(record.reason)
                }
            }
        case .notice(let notice):
            log.append("\(now / 1_000_000)ms \(notice)")
        }
    }

    /// The router closes its write end: with no reader left, what the pipe held is gone.
    mutating func release(egress fifo: FIFO) {
        fifo.writers -= 1
        if fifo.writers == 0 && fifo.readers == 0 { fifo.bytes.removeAll() }
    }

    mutating func spliceAll(from fifo: FIFO, slot: Int) {
        guard let ledger = core.spool(of: slot) else { return }
        let count = fifo.bytes.count
        guard count > 0 else { return }
        spoolFiles[ledger.pipe]!.bytes += fifo.bytes
        fifo.bytes.removeAll()
        core.spoolAppended(slot, count: count)
    }

    // MARK: Shell: one pass of the poll loop

    /// What `Router.run` does in one pass: read what the core wants read, write what is queued, tell it how much
    /// each consumer read, run its timers.
    mutating func routerPass(budget: Int = 4) {
        let ids = core.ingress.map(\.id)
        for id in ids {
            for _ in 0..<budget {
                guard let slot = core.ingressSlot(id), core.wantsToRead(slot, now: now) else { break }
                if core.ingress[slot].backlog {
                    flushAll()
                    core.ingressRead(slot, count: 0, now: now)
                    perform()
                    continue
                }
                if !readOnce(slot) { break }
            }
        }
        flushAll()
        acknowledgeAll()
        core.tick(now: now)
        perform()
        checkInvariants()
    }

    /// One read of ingress `slot`; false when there was nothing (or the pipe closed).
    mutating func readOnce(_ slot: Int) -> Bool {
        let id = core.ingress[slot].id
        let fifo = ingressFDs[id]
        if let ledger = core.spool(of: slot) {
            if ledger.unread == 0 {
                guard let fifo else {
                    core.ingressEmpty(slot, now: now)
                    perform()
                    return false
                }
                if fifo.bytes.isEmpty {
                    if fifo.writers == 0 { core.ingressEOF(slot, now: now) } else { core.ingressEmpty(slot, now: now) }
                    perform()
                    return false
                }
                if core.spoolLive >= options.spoolLimit { violations.append("spliced \(ledger.pipe) with the spools at \(core.spoolLive) bytes") }
                let n = min(fifo.bytes.count, options.readSize)
                spoolFiles[ledger.pipe]!.bytes += fifo.bytes[0..<n]
                fifo.bytes.removeFirst(n)
                core.spoolAppended(slot, count: n)
            }
            let ledger = core.spool(of: slot)!
            let file = spoolFiles[ledger.pipe]!.bytes
            let offset = Int(ledger.readOffset)
            let readable = Int(ledger.readable)
            let n = copyIntoReadSpace(slot, from: file, at: offset, atMost: readable)
            if traceActions {
                print("SPOOLREAD \(ledger.pipe) at \(offset) size \(file.count) mark \(ledger.watermark) n \(n) ids \(Self.frameIDs(in: Array(file[offset..<(offset + n)]))) pendingAfter?")
            }
            if n > 0 && spliceBackRandom?.chance(50) == true && core.canSpliceBack(slot) {
                // As `Router.spliceBack`: runs move from the spool file into their consumers' pipes.
                let plan = core.ingressReadBack(slot, count: n, now: now)
                if plan.left != 0 || plan.steps.reduce(0, { $0 + $1.count }) != n {
                    violations.append("\(ledger.pipe): a read-back of \(n) bytes planned \(plan.steps.reduce(0) { $0 + $1.count }) and left \(plan.left)")
                }
                var at = offset
                var refused: Set<Int> = []
                for step in plan.steps {
                    if let egress = step.egress, !refused.contains(egress) {
                        if core.spliceable(step), let out = egressFDs[core.egress[egress].id], out.readers > 0, out.room >= step.count {
                            out.bytes += file[at..<(at + step.count)]
                            core.wrote(egress, count: step.count)
                            splicedBytes += step.count
                        } else {
                            refused.insert(egress)
                        }
                    }
                    at += step.count
                }
                perform()
                return true
            }
            core.ingressRead(slot, count: n, now: now)
            perform()
            return n > 0
        }
        guard let fifo else { return false }
        if fifo.bytes.isEmpty {
            if fifo.writers == 0 { core.ingressEOF(slot, now: now) } else { core.ingressEmpty(slot, now: now) }
            perform()
            return false
        }
        if peekRandom?.chance(50) == true && core.canPeek(slot) {
            peekOnce(slot, fifo)
            return true
        }
        let bytes = fifo.bytes
        let n = copyIntoReadSpace(slot, from: bytes)
        if traceActions {
            print("READ \(core.ingress[slot].name) fifo \(bytes.count) ids-in-fifo \(Self.frameIDs(in: bytes)) \(n) bytes ids \(Self.frameIDs(in: Array(bytes.prefix(n)))) pending before \(core.ingress[slot].pendingBytes - n)")
        }
        fifo.bytes.removeFirst(n)
        core.ingressRead(slot, count: n, now: now)
        if traceActions { print("AFTER pending \(core.ingress[slot].pendingBytes) ids \(Self.frameIDs(in: core.ingress[slot].debugPendingBytes)) held \(core.heldBytes)") }
        perform()
        return true
    }

    /// Copies up to `limit` bytes (default: all of them) of `bytes` from `offset` into ingress `slot`'s read
    /// space, as a read(2) would; returns the count.
    mutating func copyIntoReadSpace(_ slot: Int, from bytes: [UInt8], at offset: Int = 0, atMost limit: Int? = nil) -> Int {
        core.withReadSpace(slot) { raw in
            let count = min(raw.count, limit ?? bytes.count - offset)
            bytes.withUnsafeBytes { raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + count)])) }
            return count
        }
    }

    /// One peek of ingress `slot`, as `Router.peekIngress` does: copy the head without taking it, let the core
    /// route, then take exactly what the plan says, moving each run into its consumer's pipe when the core
    /// says it may go and the pipe takes it whole.
    mutating func peekOnce(_ slot: Int, _ fifo: FIFO) {
        let bytes = fifo.bytes
        let n = copyIntoReadSpace(slot, from: bytes)
        let plan = core.ingressPeeked(slot, count: n, now: now)
        let taken = plan.steps.reduce(0) { $0 + $1.count }
        if taken + plan.left != n { violations.append("\(fifo.name): a peek of \(n) bytes planned \(taken) taken and \(plan.left) left") }
        var refused: Set<Int> = []
        for step in plan.steps {
            var moved = false
            if let egress = step.egress, !refused.contains(egress) {
                if core.spliceable(step), let out = egressFDs[core.egress[egress].id], out.readers > 0, out.room >= step.count {
                    out.bytes += fifo.bytes[0..<step.count]
                    core.wrote(egress, count: step.count)
                    splicedBytes += step.count
                    moved = true
                } else {
                    refused.insert(egress)
                }
            }
            if traceActions { print("PEEK \(core.ingress[slot].name) step \(step) moved \(moved) ids \(Self.frameIDs(in: Array(fifo.bytes.prefix(step.count))))") }
            fifo.bytes.removeFirst(min(step.count, fifo.bytes.count))
        }
        perform()
    }

    /// Writes the instances the core lists as active, as the shell does (never a scan of every instance).
    mutating func flushAll() {
        var index = 0
        while index < core.activeEgress.count {
            let slot = core.activeEgress[index]
            index += 1
            guard core.hasUnwritten(slot) else { continue }
            let id = core.egress[slot].id
            guard let fifo = egressFDs[id] else { continue }
            if fifo.readers == 0 {
                egressFailed(slot, reason: "EPIPE")
                continue
            }
            if !core.layout.egress.contains(where: { $0.name == fifo.name }) {
                violations.append("wrote to \(fifo.name), which the layout (revision \(core.layout.revision)) does not name")
            }
            let room = fifo.room
            let n = core.withUnwritten(slot, room: room, pipeEmpty: fifo.bytes.isEmpty) { bytes in
                let n = min(room, bytes.count)
                fifo.bytes += bytes[0..<n]
                return n
            }
            if n > 0 { core.wrote(slot, count: n) } else { core.egressWouldBlock(slot) }
        }
        perform()
    }

    mutating func egressFailed(_ slot: Int, reason: String) {
        let unread = egressFDs[core.egress[slot].id]?.bytes.count ?? 0
        core.egressFailed(slot, unread: unread, reason: reason, now: now)
        perform()
    }

    mutating func acknowledgeAll() {
        for slot in core.egress.indices {
            guard let fifo = egressFDs[core.egress[slot].id], fifo.readers == 0 else { continue }
            egressFailed(slot, reason: "EPOLLERR")  // epoll reports EPOLLERR on any write end with no reader, idle or not
        }
        // Progress is asked of the active instances only, as the shell does.
        var index = 0
        while index < core.activeEgress.count {
            let slot = core.activeEgress[index]
            index += 1
            guard let fifo = egressFDs[core.egress[slot].id] else { continue }
            core.egressUnread(slot, unread: fifo.bytes.count, now: now)
        }
        core.settleActiveEgress()
        perform()
    }

    // MARK: Producers

    /// Writes one frame into ingress `pipe` (whole, or not at all when the pipe lacks room: the producer would
    /// block). Returns false when it did not fit.
    @discardableResult
    mutating func produce(pipe: String, key: [UInt8], payloadSize: Int, version: UInt32 = 0) -> Bool {
        guard let fifo = fifos[pipe], let ingress = core.layout.ingress.first(where: { $0.name == pipe }) ?? spec.desiredIngress(pipe) else {
            return false
        }
        let id = nextFrameID
        var envelope = Pmm_V1_Envelope()
        envelope.dataType = ingress.dataType
        envelope.shardKey = Data(key)
        envelope.schemaVersion = version
        envelope.source = ingress.producer
        envelope.sequence = id
        envelope.payload = Data(Self.marker + withUnsafeBytes(of: id.littleEndian) { Array($0) } + Array(repeating: 0x61, count: max(0, payloadSize)))
        guard let body: [UInt8] = try? envelope.serializedBytes() else { return false }
        var frame: [UInt8] = []
        Varint.encode(UInt64(body.count), into: &frame)
        frame += body
        guard frame.count <= fifo.room else { return false }
        fifo.bytes += frame
        nextFrameID += 1
        sent[id] = Sent(dataType: ingress.dataType, key: key, atLeastOnce: ingress.qos.delivery == .atLeastOnce, pipe: pipe)
        return true
    }

    /// Bytes that are not a frame, or a length prefix past the maximum.
    mutating func garbage(pipe: String, oversized: Bool, seed: UInt64) {
        guard let fifo = fifos[pipe] else { return }
        var bytes: [UInt8]
        if oversized {
            bytes = []
            Varint.encode(UInt64(options.maximumFrameSize) * 4, into: &bytes)
            bytes += [0x0a, 0x01, 0x78]
        } else {
            var state = seed
            bytes = (0..<Int(seed % 40 + 3)).map { _ in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return UInt8(truncatingIfNeeded: state >> 33) | 0x80  // never a complete small varint
            }
        }
        guard bytes.count <= fifo.room else { return }
        fifo.bytes += bytes
    }

    // MARK: Consumers

    mutating func startConsumer(_ name: String) {
        guard let fifo = fifos[name] else { return }
        fifo.readers += 1
        consumers[name] = Consumer(alive: true, paused: false, fifo: fifo)
        // The shell's inotify watch sees the open, except when its queue overflowed: every fourth open is
        // missed, and the probe backoff must find the reader by itself.
        opensSeen &+= 1
        if opensSeen % 4 != 0 { core.egressOpenedByReader(named: name, now: now) }
    }

    mutating func killConsumer(_ name: String) {
        guard var consumer = consumers[name], consumer.alive, let fifo = consumer.fifo else { return }
        fifo.readers -= 1
        if fifo.readers == 0 && fifo.writers == 0 { fifo.bytes.removeAll() }
        consumer.alive = false
        consumer.fifo = nil
        consumer.partial = []
        consumers[name] = consumer
    }

    /// Reads up to `limit` bytes as a consumer does: any amount, frames reassembled.
    mutating func consume(_ name: String, limit: Int) {
        guard var consumer = consumers[name], consumer.alive, !consumer.paused, let fifo = consumer.fifo else { return }
        let n = min(limit, fifo.bytes.count)
        guard n > 0 else { return }
        consumer.partial += fifo.bytes[0..<n]
        fifo.bytes.removeFirst(n)
        var offset = 0
        consumer.partial.withUnsafeBytes { raw in
            while offset < raw.count {
                guard case .value(let length, let size) = Varint.decode(raw, at: offset) else {
                    if case .malformed = Varint.decode(raw, at: offset) { violations.append("\(name): torn frame (bad length)") }
                    return
                }
                guard offset + size + Int(length) <= raw.count else { return }
                let body = Array(UnsafeRawBufferPointer(rebasing: raw[(offset + size)..<(offset + size + Int(length))]))
                offset += size + Int(length)
                guard let envelope = try? Pmm_V1_Envelope(serializedBytes: body), let id = Self.frameID(in: Array(envelope.payload)) else {
                    violations.append("\(name): torn frame (not an envelope)")
                    continue
                }
                if traceActions, Self.frameIDs(in: body).count != 1 {
                    print("CONSUME \(name) frame of \(body.count) bytes holds \(Self.frameIDs(in: body)), decoded as \(id)")
                }
                let dataType = fifos[name].map { _ in core.egress.first { $0.name == name }?.spec.dataType } ?? nil
                if let dataType, envelope.dataType != dataType {
                    violations.append("\(name): frame \(id) of '\(envelope.dataType)' on a '\(dataType)' pipe")
                }
                delivered[id, default: []].append(name)
                readOrder[name, default: []].append(id)
            }
        }
        consumer.partial.removeFirst(offset)
        consumers[name] = consumer
    }

    // MARK: The router's life

    /// The router dies (SIGKILL): its memory is gone, its descriptors close. Spool files and pipes stay.
    mutating func crash() {
        crashes += 1
        if traceActions { print("CRASH spools \(spoolFiles.mapValues { "size \($0.bytes.count) mark \($0.mark)" })") }
        droppedBeforeCrashes += core.counters.dropped
        // At-most-once frames in the router's memory are lost: that is what at-most-once means.
        var inMemory: [UInt64] = []
        for pipe in core.egress {
            let queue = pipe.queue
            // Every frame not read whole.
            inMemory += queue.heldFrameBytes.withUnsafeBytes { Self.frameIDPositions(in: $0) }.map(\.id)
        }
        for route in core.routes { inMemory += Self.frameIDs(in: route.waiting.heldFrameBytes) }
        for pipe in core.ingress {
            // A frame whose head the router had read: scanned with what follows in the pipe, so a marker cut
            // by the read is found too.
            // What follows the buffer: the spool's unread bytes when the pipe has one (a pipe made at-least-once
            // with half an at-most-once frame in its buffer goes on in its spool), then the pipe.
            let pending = pipe.debugPendingBytes
            var next: [UInt8] = []
            if pipe.spool >= 0, let ledger = core.spools[pipe.spool], let file = spoolFiles[ledger.pipe] {
                let start = min(Int(ledger.readOffset), file.bytes.count)
                next = Array(file.bytes[start..<min(start + 64, file.bytes.count)])
            }
            if next.count < 64 { next += ingressFDs[pipe.id]?.bytes.prefix(64 - next.count) ?? [] }
            let stream = pending + next
            for (position, id) in Self.frameIDPositions(in: stream) where position < pending.count {
                if sent[id]?.fate == .inFlight && sent[id]?.atLeastOnce == false { sent[id]?.fate = .lostInCrash }
            }
        }
        for id in inMemory where sent[id]?.fate == .inFlight && sent[id]?.atLeastOnce == false {
            // Written to the pipe but not acknowledged: the consumer may still read it.
            sent[id]?.fate = .lostInCrash
        }
        for fifo in ingressFDs.values {
            fifo.readers -= 1
            if fifo.readers == 0 && fifo.writers == 0 && fifos[fifo.name] !== fifo {
                // With what the router already took (its spool's end, or its buffer), so a marker cut in two by
                // a read is found too.
                let taken = Array((spoolFiles[fifo.name]?.bytes ?? []).suffix(64))
                let cut = max(0, taken.count - Self.marker.count - 8)
                for (position, id) in Self.frameIDPositions(in: taken + fifo.bytes) where position > cut && sent[id]?.fate == .inFlight {
                    sent[id]?.fate = .lostWithUnlinkedPipe
                }
                fifo.bytes.removeAll()
            }
        }
        for fifo in egressFDs.values { release(egress: fifo) }
        ingressFDs = [:]
        egressFDs = [:]
        let layout = RouterLayout(spec: spec, revision: revision)
        // Frames still in an ingress pipe are taken by the next router as its layout says: at most once if an
        // apply made their type at-most-once (the router before kept spooling them; this one has no spool for
        // the pipe).
        let spooled = layout.spooledIngress
        for fifo in fifos.values where !spooled.contains(fifo.name) {
            for id in Self.frameIDs(in: fifo.bytes) where sent[id]?.fate == .inFlight { sent[id]?.atLeastOnce = false }
            // A frame the old router had spooled the head of, its rest still in this pipe, is lost as an
            // at-most-once frame whose head a dead router held: the next router adopts the spool, which ends in a
            // change of source where the head is dead-lettered, and reads the pipe from the middle of the frame
            // (resynchronising). Its marker, cut in two, is in neither dead letter, so it is counted here.
            if let file = spoolFiles[fifo.name] {
                let tail = Array(file.bytes.suffix(64))
                let head = Array(fifo.bytes.prefix(64))
                let whole = Set(Self.frameIDs(in: tail) + Self.frameIDs(in: head))
                for id in Self.frameIDs(in: tail + head) where !whole.contains(id) && sent[id]?.fate == .inFlight {
                    sent[id]?.atLeastOnce = false
                    sent[id]?.fate = .lostInCrash
                }
            }
        }
        disk.current = fifos.mapValues(\.inode)
        core = RouterCore(layout: layout, options: options, now: now, seed: UInt64(crashes), openSpool: disk.open)
        // As Router.init does: spools of pipes the layout no longer names at least once are read back too.
        for pipe in spoolFiles.keys.sorted() where !layout.spooledIngress.contains(pipe) {
            // Opened as SpoolFile.open(source: nil) does, with a change of source at its end, which the mark
            // records at once.
            if let ledger = disk.open(pipe, adopting: true) { core.adoptSpool(ledger, now: now) }
        }
        spoolLiveAtRestart = core.spoolLive
        perform()
    }


    /// What `Router.checkpointSpools` does.
    mutating func checkpoint() {
        for pipe in core.ingress where pipe.spool >= 0 && !pipe.draining {
            if let fifo = ingressFDs[pipe.id], let ledger = core.spools[pipe.spool] { disk.sources[ledger.pipe] = fifo.inode }
        }
        for ledger in core.spools.compactMap({ $0 }) { disk.cuts[ledger.pipe] = ledger.cuts }
        for index in core.spools.indices {
            guard let ledger = core.spools[index] else { continue }
            if ledger.size > 0 && core.spoolEmptyable(index) {
                spoolFiles[ledger.pipe]!.bytes = []
                core.spoolTruncated(index)
            }
            spoolFiles[ledger.pipe]!.mark = core.spools[index]!.watermark
        }
    }

    /// `pmm apply` of `new`, then SIGHUP: pipes made and removed, the router reloads.
    mutating func apply(_ new: MeshSpec) {
        let old = RouterLayout(spec: spec, revision: revision)
        revision += 1
        let layout = RouterLayout(spec: new, revision: revision)
        let oldIngress = Set(old.ingress.map(\.name))
        let newIngress = Set(layout.ingress.map(\.name))
        let oldEgress = Set(old.egress.map(\.name))
        let newEgress = Set(layout.egress.map(\.name))
        // Removed pipes are unlinked: their producers close them after a while (here, at once); consumers of
        // removed egress pipes stop.
        for name in oldIngress.subtracting(newIngress) {
            if let fifo = fifos.removeValue(forKey: name) { fifo.writers -= 1 }
        }
        // An instance whose lease ended keeps its pipe and, if it runs, its reader (who may read on what the
        // router had written); one that takes a lease again is routed on the same pipe.
        let pipes = Set(new.desiredPipes().map(\.name))
        for name in oldEgress.subtracting(newEgress) where !pipes.contains(name) {
            killConsumer(name)
            consumers[name] = nil
            fifos[name] = nil
        }
        for name in newIngress.subtracting(oldIngress) { makeFIFO(name, capacity: 65_536).writers = 1 }
        for name in newEgress.subtracting(oldEgress) {
            if fifos[name] == nil { makeFIFO(name, capacity: 65_536) }
            if consumers[name]?.alive != true { startConsumer(name) }
        }
        // A type made at-most-once is routed so from now on, the frames the router already holds of it included
        // (its spool's too): with drop-oldest they may be dropped, counted.
        for dataType in new.dataTypes where dataType.qos.delivery == .atMostOnce && spec.dataType(named: dataType.name)?.qos.delivery == .atLeastOnce {
            for (id, frame) in sent where frame.dataType == dataType.name && frame.fate == .inFlight && delivered[id] == nil {
                sent[id]?.atLeastOnce = false
            }
        }
        spec = new
        // The shell opens a spool with the inode its pipe has now (Router.spoolOpener stats the path), so a name
        // added again gets a change of source after what its old pipe spooled.
        disk.current = fifos.mapValues(\.inode)
        core.install(layout, now: now, openSpool: disk.open)
        perform()
    }

    // MARK: The checker

    static func frameID(in payload: [UInt8]) -> UInt64? {
        guard payload.count >= marker.count + 8, Array(payload[0..<marker.count]) == marker else { return nil }
        return payload[marker.count..<(marker.count + 8)].withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    /// Every frame id whose marker appears in `bytes`.
    static func frameIDs(in bytes: [UInt8]) -> [UInt64] { frameIDPositions(in: bytes).map(\.id) }

    /// Every frame id whose marker appears in `bytes`, with the marker's position.
    static func frameIDPositions(in bytes: [UInt8]) -> [(position: Int, id: UInt64)] {
        bytes.withUnsafeBytes { frameIDPositions(in: $0) }
    }

    static func frameIDPositions(in raw: UnsafeRawBufferPointer) -> [(position: Int, id: UInt64)] {
        let width = marker.count + 8
        guard raw.count >= width else { return [] }
        var ids: [(Int, UInt64)] = []
        do {
            var i = 0
            let last = raw.count - width
            while i <= last {
                if raw[i] == 0x50 && raw[i + 1] == 0x4d && raw[i + 2] == 0x4d && raw[i + 3] == 0x53 && raw[i + 4] == 0x49 && raw[i + 5] == 0x4d {
                    ids.append((i, UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i + 6, as: UInt64.self))))
                    i += width
                } else {
                    i += 1
                }
            }
        }
        return ids
    }

    /// Checked after every step: memory bounds, buffers, spools.
    mutating func checkInvariants() {
        // `heldBytes` must be what the queues' buffers take, acknowledged bytes whose segment is not freed yet included,
        // and within the bound: the memory limit bounds that, not only the frames still held.
        let memoryBound = options.memoryLimit + options.maximumFrameSize
        if core.heldBytes > memoryBound { violations.append("held \(core.heldBytes) bytes, bound \(memoryBound)") }
        let actualHeld = core.egress.reduce(0) { $0 + $1.queue.footprint } + core.routes.reduce(0) { $0 + $1.waiting.footprint }
        if actualHeld != core.heldBytes { violations.append("heldBytes \(core.heldBytes) but the queues' buffers take \(actualHeld)") }
        for pipe in core.ingress where pipe.bufferCapacity > options.maximumFrameSize + options.readSize {
            violations.append("\(pipe.name): buffer of \(pipe.bufferCapacity) bytes")
        }
        for pipe in core.egress {
            if let index = pipe.queue.firstMalformedFrame() { violations.append("\(pipe.name): queued frame \(index) is not whole") }
        }
        // The shell writes and watches only the active instances: one that holds frames and is not listed would
        // never be written, or its reader's progress never seen.
        let active = Set(core.activeEgress)
        if active.count != core.activeEgress.count { violations.append("activeEgress lists a slot twice: \(core.activeEgress)") }
        for slot in core.egress.indices where !active.contains(slot) {
            let pipe = core.egress[slot]
            if pipe.queue.count > 0 || pipe.queue.inPipe > 0 || pipe.stalled {
                violations.append("\(pipe.name): holds \(pipe.queue.count) queued and \(pipe.queue.inPipe) unread frames but is not in activeEgress")
            }
        }
        for route in core.routes {
            if let index = route.waiting.firstMalformedFrame() { violations.append("waiting frame \(index) is not whole") }
        }
        // One read past the limit, or one pipe's worth when a replaced pipe is spooled to its end; after a
        // restart, what the marks (written every 50 ms) still count as live.
        for pipe in core.egress where !(spec.service(named: pipe.spec.service).map { spec.isRouted(instance: pipe.spec.instance, of: $0) } ?? false) {
            violations.append("\(pipe.name): routed, but its instance holds no lease (registration: required)")
        }
        let spoolBound = max(options.spoolLimit + Int64(max(options.readSize, 65_536)), spoolLiveAtRestart)
        if core.spoolLive > spoolBound { violations.append("spools hold \(core.spoolLive) live bytes, bound \(spoolBound)") }
        spoolLiveAtRestart = min(spoolLiveAtRestart, core.spoolLive)
    }

    /// At the end, once everything settled: where every frame went.
    func accountingViolations() -> [String] {
        var problems: [String] = []
        var silentlyGone = 0
        var firstGone: UInt64?
        for (id, frame) in sent.sorted(by: { $0.key < $1.key }) {
            if delivered[id] != nil { continue }
            switch frame.fate {
            case .deadLettered, .discarded, .lostWithUnlinkedPipe: continue
            case .lostInCrash where !frame.atLeastOnce: continue
            case .inFlight, .lostInCrash:
                if frame.atLeastOnce {
                    problems.append("at-least-once frame \(id) (\(frame.dataType) via \(frame.pipe)) was never delivered nor dead-lettered")
                } else {
                    silentlyGone += 1
                    if firstGone == nil { firstGone = id }
                }
            }
        }
        let dropped = droppedBeforeCrashes + core.counters.dropped
        if UInt64(silentlyGone) > dropped {
            let first = firstGone.flatMap { sent[$0] }.map { "\(firstGone ?? 0) via \($0.pipe), \($0.fate)" } ?? ""
            problems.append("\(silentlyGone) at-most-once frames gone but only \(dropped) counted dropped (first: \(first))")
        }
        return problems
    }
}

extension MeshSpec {
    /// The ingress description of `pipe` in this spec (for frames written after a reload removed it).
    func desiredIngress(_ pipe: String) -> RouterLayout.Ingress? {
        RouterLayout(spec: self, revision: 0).ingress.first { $0.name == pipe }
    }
}
