/// A pipe the spec asks for: where it is, who may write and read it, and its permission bits.
public struct DesiredPipe: Hashable, Sendable {
    public var name: String
    public var kind: PipeKind
    public var dataType: String
    /// The producing service (ingress) or the consuming service (egress).
    public var service: String
    /// The consumer instance, for egress pipes.
    public var instance: String?
    /// The shard, for ingress pipes.
    public var shard: Int?
    /// The owner: the service that writes (ingress) or reads (egress) the pipe.
    public var uid: UInt32
    /// The group: the mesh's `routerGroup`.
    public var gid: UInt32
    /// Permission bits: 0o240 for ingress (owner writes, group reads), 0o420 for egress.
    public var mode: UInt32
    /// F_SETPIPE_SZ in bytes, or nil for the kernel's default. The kernel keeps no size on a FIFO's inode:
    /// the router applies it when it opens the pipe.
    public var pipeSize: Int?

    public init(
        name: String, kind: PipeKind, dataType: String, service: String, instance: String? = nil, shard: Int? = nil,
        uid: UInt32, gid: UInt32, mode: UInt32, pipeSize: Int?
    ) {
        self.name = name
        self.kind = kind
        self.dataType = dataType
        self.service = service
        self.instance = instance
        self.shard = shard
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.pipeSize = pipeSize
    }

    /// Owner may write, group (the router) may read.
    public static let ingressMode: UInt32 = 0o240
    /// Owner may read, group (the router) may write.
    public static let egressMode: UInt32 = 0o420
    /// A single-user mesh (pmm and the router run as the pipe's owner, not root): the owner both writes and
    /// reads, since that user owns the file and could chmod it anyway.
    public static let singleUserMode: UInt32 = 0o600

    /// Who writes this pipe, for people.
    public var writerDescription: String {
        kind == .ingress ? "service \(service) (uid \(uid))" : "the router (gid \(gid))"
    }

    /// Who reads this pipe, for people.
    public var readerDescription: String {
        kind == .ingress ? "the router (gid \(gid))" : "\(instance ?? service) (uid \(uid))"
    }
}

extension MeshSpec {
    /// Every pipe this spec asks for, sorted by file name.
    ///
    /// Bindings to undeclared data types are skipped: validation reports them.
    ///
    /// - Parameter singleUserUID: the uid pmm runs as when it is not root. Pipes that uid owns get mode 0600:
    ///   the router runs as that same user and must both read ingress and write egress pipes, and owner bits
    ///   are the only ones that apply to an owner. Nil (as root) keeps the contract's 0240 and 0420.
    /// - Parameter node: in a multi-node mesh, only that node's share: the egress pipes of the instances placed
    ///   on it, and the ingress pipes of the producers with instances on it. Nil: every node's pipes.
    public func desiredPipes(singleUserUID: UInt32? = nil, node: String? = nil) -> [DesiredPipe] {
        var pipes: [DesiredPipe] = []
        for service in services {
            for binding in service.produces where service.runs(on: node) {
                guard let dataType = dataType(named: binding.dataType) else { continue }
                let qos = dataType.qos.applying(binding.qos)
                for shard in 0..<max(0, dataType.shards) {
                    pipes.append(
                        DesiredPipe(
                            name: Naming.ingress(producer: service.name, dataType: dataType.name, shard: shard),
                            kind: .ingress, dataType: dataType.name, service: service.name, shard: shard,
                            uid: service.uid, gid: routerGroup, mode: DesiredPipe.ingressMode, pipeSize: qos.pipeSize))
                }
            }
            for binding in service.consumes {
                guard let dataType = dataType(named: binding.dataType) else { continue }
                let qos = dataType.qos.applying(binding.qos)
                for instance in node.map({ service.instances(on: $0) }) ?? service.instanceNames {
                    pipes.append(
                        DesiredPipe(
                            name: Naming.egress(instance: instance, dataType: dataType.name),
                            kind: .egress, dataType: dataType.name, service: service.name, instance: instance,
                            uid: service.uid, gid: routerGroup, mode: DesiredPipe.egressMode, pipeSize: qos.pipeSize))
                }
            }
        }
        if let singleUserUID, singleUserUID != 0 {
            for index in pipes.indices where pipes[index].uid == singleUserUID {
                pipes[index].mode = DesiredPipe.singleUserMode
            }
        }
        return pipes.sorted { $0.name < $1.name }
    }
}
