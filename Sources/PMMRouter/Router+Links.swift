import Foundation
import Logging
import PMMCore
import PMMLink
import PMMRouterCore
import PMMSystem

/// The shell's side of routing across nodes: it starts the `LinkManager`, turns its events into the core's
/// link events, hands the core's remote frames to the links and the core's acknowledgements back, and tells
/// the peers this node's health. The decisions are the core's (`RouterCore+Links.swift`).
extension Router {
    /// The links of a multi-node layout served on its node (nil on one host, or a node without peers).
    static func startLinks(_ layout: RouterLayout, logger: Logger) throws(LinkError) -> LinkManager? {
        guard let node = layout.node, !layout.peers.isEmpty else { return nil }
        guard let text = layout.address, let listen = LinkAddress(text) else {
            throw .configuration("node \(node) has no usable `address` (host:port) in the spec")
        }
        var peers: [String: LinkAddress] = [:]
        for peer in layout.peers {
            guard let address = LinkAddress(peer.address) else {
                throw .configuration("node \(peer.name) has no usable `address` (host:port) in the spec")
            }
            peers[peer.name] = address
        }
        let tls = layout.linkTLS.map { PMMLink.LinkTLS(ca: $0.ca, certificate: $0.cert, key: $0.key) }
        if tls == nil {
            logger.warning("links are plaintext: the spec has no links.tls; anyone who can reach the port can send frames")
        }
        let configuration = LinkConfiguration(
            node: node, listen: listen, peers: peers, knownNodes: Set(layout.peers.map(\.name) + [node]),
            revision: UInt64(max(0, layout.revision)), tls: tls)
        let manager = try LinkManager(configuration: configuration, logger: logger)
        logger.info("links listening", metadata: ["node": "\(node)", "port": "\(manager.listeningPort)", "peers": "\(peers.keys.sorted())"])
        return manager
    }

    /// Link events in, remote frames out. Once per loop pass, before the pipes are written.
    func pumpLinks(now: UInt64) {
        guard let links else { return }
        let events = links.events()
        for event in events {
            switch event {
            case .connected(let peer, let info):
                guard let p = core.peerSlot(peer) else { continue }
                logger.info("link up", metadata: ["peer": "\(peer)", "peer_revision": "\(info.revision)"])
                core.linkConnected(p, resumeAfter: info.resumeAfter, revision: info.revision, health: info.health, now: now)
            case .disconnected(let peer, let reason):
                guard let p = core.peerSlot(peer) else { continue }
                logger.warning("link down; its instances are unavailable until it is back", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
                core.linkDisconnected(p, reason: reason, now: now)
            case .received(let peer, let received):
                guard let p = core.peerSlot(peer) else { continue }
                lastLinkProgress = now
                let frames = received.frames
                for index in frames.indices {
                    frames.withFrameBytes(at: index) { bytes in
                        core.linkFrameReceived(
                            p, stream: received.stream, sequence: received.firstSequence + UInt64(index), target: frames.target(at: index),
                            frame: bytes, now: now)
                    }
                }
            case .acknowledged(let peer, let upTo):
                guard let p = core.peerSlot(peer) else { continue }
                core.linkAcknowledged(p, upTo: upTo)
            case .health(let peer, let revision, let instances):
                guard let p = core.peerSlot(peer) else { continue }
                core.linkHealth(p, revision: revision, instances: instances, now: now)
            case .refused(let peer, let remote, let reason):
                logger.warning("link refused", metadata: ["peer": "\(peer ?? "unknown")", "remote": "\(remote)", "reason": "\(reason)"])
            }
            performActions()
        }
        // Every received frame was copied into a queue (or dead-lettered): the batches' buffers can serve again.
        links.recycle(events)
        sendLinkFrames(links)
    }

    /// Tells the peers what this pass learned: frames of theirs now done here (acknowledgements), and this
    /// node's instances' health when it changed. At the end of every pass, after the consumers' progress.
    func tellPeers() {
        guard let links else { return }
        core.linkAcknowledgements { peer, stream, upTo in
            links.acknowledge(peer: peer, stream: stream, upTo: upTo)
            lastLinkProgress = monotonicNanos()
        }
        // Availability changes bump the core's epoch: the health is looked at only then, not on every pass.
        guard core.epoch != announcedEpoch else { return }
        announcedEpoch = core.epoch
        let health = core.localHealth
        if health != announcedHealth {
            announcedHealth = health
            links.announceHealth(health)
        }
    }

    /// Hands every peer the frames routed to its instances, as many as its window takes; a queue whose frames
    /// did not fit counts as blocked (its overflow policy applies once full).
    func sendLinkFrames(_ links: LinkManager) {
        for p in core.peers.indices where core.peers[p].up {
            // Copy out only what the window takes now (a full window would otherwise cost a copy of every
            // waiting frame on every pass), and at most 1 MiB per pass.
            let room = min(links.room(for: core.peers[p].name), 1 << 20)
            guard room > 0 else {
                // Nothing fits: queues of this peer's instances count as blocked (their overflow policy applies
                // once full) until an acknowledgement makes room.
                for slot in core.linkSlots(p) where core.egress[slot].queue.unwrittenBytes > 0 { core.egressWouldBlock(slot) }
                continue
            }
            let name = core.peers[p].name
            // The frames are lent by their queues and copied once, into the link's batches, inside `send`.
            let (result, slots) = core.withLinkFrames(p, limit: room) { slots, frames -> (LinkSendResult, [Int]) in
                guard !frames.isEmpty else { return (LinkSendResult(accepted: 0, firstSequence: 0), []) }
                var borrowed: [BorrowedLinkFrame] = []
                borrowed.reserveCapacity(frames.count)
                var slot = -1
                var target = ""
                for i in frames.indices {
                    if slots[i] != slot {  // frames come grouped by instance
                        slot = slots[i]
                        target = core.egress[slot].name
                    }
                    borrowed.append(BorrowedLinkFrame(target: target, bytes: frames[i]))
                }
                return (borrowed.withUnsafeBufferPointer { links.send(to: name, borrowing: $0) }, slots)
            }
            guard !slots.isEmpty else { continue }
            core.linkSent(p, firstSequence: result.firstSequence, slots: slots.prefix(result.accepted))
            for slot in Set(slots.dropFirst(result.accepted)) { core.egressWouldBlock(slot) }
        }
    }
}
