import PMMCore
import Yams

extension NodeReader {
    /// Reads the whole document. Returns a spec even when parts were rejected (with defaults in their place), so
    /// that semantic validation can report the rest in the same run.
    mutating func readMesh(_ node: Node) -> MeshSpec? {
        let top = DocumentPath.root
        guard let pairs = mapping(node, top, allowed: SpecKeys.document, required: SpecKeys.documentRequired, what: "a mesh document")
        else { return nil }
        var spec = MeshSpec(apiVersion: "", kind: "", name: "", root: "")
        var dataTypes: [DataType] = []
        var services: [Service] = []
        var routes: [Route] = []
        var nodes: [MeshNode] = []
        var linkTLS: LinkTLS?
        for (key, _, value) in pairs {
            let path = top.appending(key)
            switch key {
            case "apiVersion": spec.apiVersion = string(value, path) ?? MeshSpec.apiVersion
            case "kind": spec.kind = string(value, path) ?? MeshSpec.kind
            case "name": spec.name = string(value, path) ?? ""
            case "root": spec.root = string(value, path) ?? ""
            case "routerGroup": spec.routerGroup = id(value, path) ?? 0
            case "adminUid": spec.adminUID = id(value, path)
            case "dataTypes":
                for (name, _, body) in mapping(value, path, allowed: nil, what: "data types by name") ?? [] {
                    if let dataType = readDataType(name: name, body, path.appending(name)) { dataTypes.append(dataType) }
                }
            case "services":
                for (name, _, body) in mapping(value, path, allowed: nil, what: "services by name") ?? [] {
                    if let service = readService(name: name, body, path.appending(name)) { services.append(service) }
                }
            case "routes":
                for (name, _, body) in mapping(value, path, allowed: nil, what: "routes by data type") ?? [] {
                    if let route = readRoute(dataType: name, body, path.appending(name)) { routes.append(route) }
                }
            case "nodes":
                for (name, _, body) in mapping(value, path, allowed: nil, what: "nodes by name") ?? [] {
                    if let node = readNode(name: name, body, path.appending(name)) { nodes.append(node) }
                }
            case "links":
                for (linkKey, _, linkValue) in mapping(value, path, allowed: SpecKeys.links, what: "link settings") ?? [] where linkKey == "tls" {
                    linkTLS = readTLS(linkValue, path.appending(linkKey))
                }
            default: break
            }
        }
        if map.isRejected(top.appending("apiVersion")) { spec.apiVersion = MeshSpec.apiVersion }
        if map.isRejected(top.appending("kind")) { spec.kind = MeshSpec.kind }
        // With nodes, a service that names no placement runs `replicas` instances on every node (DESIGN.md,
        // "Beyond one host"); its replicas become their sum.
        if !nodes.isEmpty {
            for index in services.indices where services[index].placement.isEmpty {
                services[index].placement = Dictionary(uniqueKeysWithValues: nodes.map { ($0.name, services[index].replicas) })
                services[index].replicas *= nodes.count
            }
        }
        return MeshSpec(
            apiVersion: spec.apiVersion, kind: spec.kind, name: spec.name, root: spec.root,
            routerGroup: spec.routerGroup, adminUID: spec.adminUID, dataTypes: dataTypes, services: services,
            routes: routes, nodes: nodes, linkTLS: linkTLS)
    }

    mutating func readNode(name: String, _ node: Node, _ path: DocumentPath) -> MeshNode? {
        guard let pairs = mapping(node, path, allowed: SpecKeys.node, required: SpecKeys.nodeRequired, what: "a node") else { return nil }
        var result = MeshNode(name: name, address: "")
        for (key, _, value) in pairs {
            let keyPath = path.appending(key)
            switch key {
            case "address": result.address = string(value, keyPath) ?? ""
            case "labels":
                for (label, _, labelValue) in mapping(value, keyPath, allowed: nil, what: "labels") ?? [] {
                    if let text = string(labelValue, keyPath.appending(label)) { result.labels[label] = text }
                }
            default: break
            }
        }
        return result
    }

    mutating func readTLS(_ node: Node, _ path: DocumentPath) -> LinkTLS? {
        guard let pairs = mapping(node, path, allowed: SpecKeys.tls, required: SpecKeys.tlsRequired, what: "TLS settings") else { return nil }
        var tls = LinkTLS(ca: "", cert: "", key: "")
        for (key, _, value) in pairs {
            let keyPath = path.appending(key)
            switch key {
            case "ca": tls.ca = string(value, keyPath) ?? ""
            case "cert": tls.cert = string(value, keyPath) ?? ""
            case "key": tls.key = string(value, keyPath) ?? ""
            default: break
            }
        }
        return tls
    }

    mutating func readDataType(name: String, _ node: Node, _ path: DocumentPath) -> DataType? {
        guard let pairs = mapping(node, path, allowed: SpecKeys.dataType, what: "a data type") else { return nil }
        var dataType = DataType(name: name)
        var versions: [SchemaVersion] = []
        for (key, _, value) in pairs {
            let keyPath = path.appending(key)
            switch key {
            case "shards": dataType.shards = integer(value, keyPath) ?? 1
            case "compatibility": dataType.compatibility = choice(value, keyPath, Compatibility.self) ?? .backward
            case "qos": dataType.qos = QoS().applying(readQoS(value, keyPath))
            case "versions":
                for (index, item) in (sequence(value, keyPath, what: "versions") ?? []).enumerated() {
                    if let version = readVersion(item, keyPath.appending(index: index)) { versions.append(version) }
                }
            default: break
            }
        }
        // Keep declaration order for diagnostics' indices; MeshSpec sorts for comparison.
        return DataType(
            name: name, shards: dataType.shards, compatibility: dataType.compatibility, versions: versions,
            qos: dataType.qos)
    }

    mutating func readVersion(_ node: Node, _ path: DocumentPath) -> SchemaVersion? {
        guard let pairs = mapping(node, path, allowed: SpecKeys.version, required: SpecKeys.versionRequired, what: "a schema version")
        else { return nil }
        var version = SchemaVersion(version: 1, schema: "", message: "")
        for (key, _, value) in pairs {
            let keyPath = path.appending(key)
            switch key {
            case "version": version.version = integer(value, keyPath) ?? 1
            case "schema": version.schema = string(value, keyPath) ?? ""
            case "message": version.message = string(value, keyPath) ?? ""
            default: break
            }
        }
        return version
    }

    mutating func readQoS(_ node: Node, _ path: DocumentPath) -> QoSOverride {
        var qos = QoSOverride()
        for (key, _, value) in mapping(node, path, allowed: SpecKeys.qos, what: "qos settings") ?? [] {
            let keyPath = path.appending(key)
            switch key {
            case "delivery": qos.delivery = choice(value, keyPath, Delivery.self)
            case "maxRate": qos.maxRate = integer(value, keyPath)
            case "burst": qos.burst = integer(value, keyPath)
            case "buffer": qos.buffer = integer(value, keyPath)
            case "overflow": qos.overflow = choice(value, keyPath, Overflow.self)
            case "pipeSize": qos.pipeSize = byteSize(value, keyPath)
            default: break
            }
        }
        return qos
    }

    mutating func readService(name: String, _ node: Node, _ path: DocumentPath) -> Service? {
        guard let pairs = mapping(node, path, allowed: SpecKeys.service, required: SpecKeys.serviceRequired, what: "a service")
        else { return nil }
        var uid: UInt32 = 0
        var gid: UInt32?
        var replicas = 1
        var produces: [Binding] = []
        var consumes: [Binding] = []
        var registration = RegistrationPolicy.optional
        var placement: [String: Int] = [:]
        for (key, _, value) in pairs {
            let keyPath = path.appending(key)
            switch key {
            case "uid": uid = id(value, keyPath) ?? 0
            case "registration": registration = choice(value, keyPath, RegistrationPolicy.self) ?? .optional
            case "gid": gid = id(value, keyPath)
            case "replicas": replicas = integer(value, keyPath) ?? 1
            case "placement":
                for (nodeName, _, count) in mapping(value, keyPath, allowed: nil, what: "instances by node") ?? [] {
                    placement[nodeName] = integer(count, keyPath.appending(nodeName)) ?? 0
                }
            case "produces", "consumes":
                var bindings: [Binding] = []
                for (index, item) in (sequence(value, keyPath, what: "data types") ?? []).enumerated() {
                    if let binding = readBinding(item, keyPath.appending(index: index)) { bindings.append(binding) }
                }
                if key == "produces" { produces = bindings } else { consumes = bindings }
            default: break
            }
        }
        let placed = placement.values.reduce(0, +)
        if !placement.isEmpty, let entry = map.values[path.appending("replicas")], replicas != placed {
            error(
                .invalidValue, "service '\(name)': replicas is \(replicas) but its placement puts \(placed) instances", at: path.appending("replicas"),
                location: entry.location, span: entry.span,
                notes: ["with a placement, replicas may be left out; if given, it must equal the placement's sum"])
        }
        return Service(
            name: name, uid: uid, gid: gid, replicas: placement.isEmpty ? replicas : placed, produces: produces,
            consumes: consumes, registration: registration, placement: placement)
    }

    mutating func readBinding(_ node: Node, _ path: DocumentPath) -> Binding? {
        guard let pairs = mapping(node, path, allowed: SpecKeys.binding, required: SpecKeys.bindingRequired, what: "a data type binding")
        else { return nil }
        var binding = Binding(dataType: "")
        for (key, _, value) in pairs {
            let keyPath = path.appending(key)
            switch key {
            case "dataType": binding.dataType = string(value, keyPath) ?? ""
            case "version": binding.version = integer(value, keyPath)
            case "qos": binding.qos = readQoS(value, keyPath)
            case "capacity": binding.capacity = integer(value, keyPath)
            default: break
            }
        }
        if map.isRejected(path.appending("dataType")) { return nil }
        return binding
    }

    mutating func readRoute(dataType: String, _ node: Node, _ path: DocumentPath) -> Route? {
        guard let pairs = mapping(node, path, allowed: SpecKeys.route, required: SpecKeys.routeRequired, what: "a route")
        else { return nil }
        var route = Route(dataType: dataType, targets: [])
        for (key, _, value) in pairs {
            let keyPath = path.appending(key)
            switch key {
            case "policy": route.policy = choice(value, keyPath, RoutingPolicy.self) ?? .shard
            case "locality": route.locality = choice(value, keyPath, Locality.self) ?? .any
            case "targets":
                for (index, item) in (sequence(value, keyPath, what: "targets") ?? []).enumerated() {
                    let itemPath = keyPath.appending(index: index)
                    guard let fields = mapping(item, itemPath, allowed: SpecKeys.target, required: SpecKeys.targetRequired, what: "a route target")
                    else { continue }
                    var target = RouteTarget(service: "")
                    for (field, _, fieldValue) in fields {
                        switch field {
                        case "service": target.service = string(fieldValue, itemPath.appending(field)) ?? ""
                        case "weight": target.weight = integer(fieldValue, itemPath.appending(field)) ?? 1
                        default: break
                        }
                    }
                    if !map.isRejected(itemPath.appending("service")) { route.targets.append(target) }
                }
            default: break
            }
        }
        if map.isRejected(path.appending("targets")) { return nil }
        return route
    }
}
