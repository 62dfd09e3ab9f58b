public import PMMCore

/// The picture formats `pmm graph` writes.
public enum GraphFormat: String, CaseIterable, Sendable {
    /// Graphviz: `dot -Tsvg` turns it into a picture.
    case dot
    /// A mermaid flowchart: GitHub and many wikis draw it inline.
    case mermaid
}

/// The mesh as a picture: services, data types, routes and, when the spec has `nodes:`, the nodes.
///
/// Producers point at the data types they write, data types at the services they are routed to; each edge
/// says what flows on it (version, rate limit, policy, weight and share). With ``GraphLive`` figures from the
/// running router, instances carry their health and edges their messages per second.
///
/// Pure: a spec (and optional figures) in, text out; the same inputs always give the same text, in name order.
/// With nodes, each node is a Graphviz cluster (a mermaid subgraph) holding one box per service it runs, so a
/// service placed on two nodes appears twice, once with each node's instances.
public enum MeshGraph {
    /// Renders `spec` in `format`.
    public static func render(_ spec: MeshSpec, format: GraphFormat, live: GraphLive? = nil) -> String {
        let model = Model(spec: spec, live: live)
        switch format {
        case .dot: return dot(model)
        case .mermaid: return mermaid(model)
        }
    }

    // MARK: - The model both formats draw

    /// One box: a service, or a service's share on one node.
    struct ServiceBox {
        var id: String
        var service: Service
        var node: String?
        var instances: [String]
        var lines: [String]
        /// Live: the worst health among its instances (nil without live figures or without egress pipes).
        var health: GraphLive.Health?
    }

    struct TypeBox {
        var id: String
        var dataType: DataType
        var lines: [String]
    }

    struct Edge {
        enum Style { case solid, dashed, dotted }
        var from: String
        var to: String
        var label: String
        var style: Style
        /// Relative thickness: 1 for producers and single targets, more for heavier shares of a route.
        var penWidth: Double
    }

    struct Model {
        var title: String
        var nodes: [MeshNode]
        var services: [ServiceBox]
        var types: [TypeBox]
        var edges: [Edge]

        init(spec: MeshSpec, live: GraphLive?) {
            title = "mesh \(spec.name) · root \(spec.root)"
            nodes = spec.nodes
            types = spec.dataTypes.map { dataType in
                var lines = [dataType.name]
                var facts = ["\(dataType.shards) shard\(dataType.shards == 1 ? "" : "s")", dataType.qos.delivery.rawValue]
                if dataType.qos.maxRate > 0 { facts.append("max \(dataType.qos.maxRate)/s") }
                lines.append(facts.joined(separator: " · "))
                if !dataType.versions.isEmpty {
                    lines.append(
                        dataType.versions.map { "v\($0.version)" }.joined(separator: ", ") + " · " + dataType.compatibility.rawValue)
                }
                var extra = ["buffer \(dataType.qos.buffer)", "overflow \(dataType.qos.overflow.rawValue)"]
                if let pipeSize = dataType.qos.pipeSize { extra.append("pipe \(MeshGraph.bytes(pipeSize))") }
                lines.append(extra.joined(separator: " · "))
                if let waiting = live?.waiting[dataType.name], waiting > 0 { lines.append("\(waiting) waiting for an instance") }
                return TypeBox(id: "type_" + MeshGraph.identifier(dataType.name), dataType: dataType, lines: lines)
            }
            // One box per service, or per (service, node) with nodes.
            var boxes: [ServiceBox] = []
            var boxesByService: [String: [Int]] = [:]
            for service in spec.services {
                let shares: [(node: String?, instances: [String])] =
                    spec.nodes.isEmpty
                    ? [(nil, service.instanceNames)]
                    : spec.nodes.map { ($0.name, service.instances(on: $0.name)) }.filter { !$0.instances.isEmpty }
                for share in shares {
                    var lines = [service.name]
                    var facts = ["uid \(service.uid)"]
                    if service.gid != service.uid { facts.append("gid \(service.gid)") }
                    facts.append("\(share.instances.count) instance\(share.instances.count == 1 ? "" : "s")")
                    lines.append(facts.joined(separator: " · "))
                    if service.registration == .required { lines.append("lease required") }
                    var worst: GraphLive.Health?
                    for instance in share.instances {
                        if let live, !service.consumes.isEmpty {
                            let health = live.instances[instance] ?? .down
                            worst = max(worst ?? .healthy, health)
                            lines.append("\(instance) \(health.mark) \(health.rawValue)")
                        } else {
                            lines.append(instance)
                        }
                    }
                    let id = "svc_" + MeshGraph.identifier(service.name) + (share.node.map { "__" + MeshGraph.identifier($0) } ?? "")
                    boxesByService[service.name, default: []].append(boxes.count)
                    boxes.append(ServiceBox(id: id, service: service, node: share.node, instances: share.instances, lines: lines, health: worst))
                }
            }
            services = boxes
            var edges: [Edge] = []
            for service in spec.services {
                for binding in service.produces {
                    let version = binding.version ?? spec.dataType(named: binding.dataType)?.latestVersion
                    for index in boxesByService[service.name] ?? [] {
                        let box = boxes[index]
                        var parts: [String] = []
                        if let version { parts.append("writes v\(version)") }
                        if let maxRate = binding.qos.maxRate { parts.append("max \(maxRate)/s") }
                        // One router's figures: with nodes, every node's box of this producer shows them.
                        if let live { parts.append(MeshGraph.rate(live.ingress[service.name + "." + binding.dataType] ?? 0)) }
                        edges.append(
                            Edge(from: box.id, to: "type_" + MeshGraph.identifier(binding.dataType), label: parts.joined(separator: " · "),
                                 style: .solid, penWidth: 1))
                    }
                }
            }
            for dataType in spec.dataTypes {
                let consumers = spec.services.filter { $0.consumes.contains { $0.dataType == dataType.name } }
                let route = spec.effectiveRoute(for: dataType.name)
                let total = route?.targets.reduce(0) { $0 + $1.weight } ?? 0
                for consumer in consumers {
                    let binding = consumer.consumes.first { $0.dataType == dataType.name }
                    let version = binding?.version ?? dataType.latestVersion
                    let target = route?.targets.first { $0.service == consumer.name }
                    for index in boxesByService[consumer.name] ?? [] {
                        let box = boxes[index]
                        var parts: [String] = []
                        var style = Edge.Style.solid
                        var penWidth = 1.0
                        if let route, let target {
                            parts.append(route.policy.rawValue)
                            if route.locality != .any { parts.append(route.locality.rawValue) }
                            if route.targets.count > 1 || target.weight != 1 {
                                let share = total > 0 ? Int((Double(target.weight) * 100 / Double(total)).rounded()) : 0
                                parts.append("weight \(target.weight) (\(share)%)")
                                penWidth = 1 + 3 * Double(share) / 100
                            }
                            if target.weight == 0 { style = .dashed }
                        } else {
                            parts.append("not a route target")
                            style = .dotted
                        }
                        if let version { parts.append("reads v\(version)") }
                        if let capacity = binding?.capacity { parts.append("capacity \(capacity)/s") }
                        if let live {
                            parts.append(MeshGraph.rate(box.instances.reduce(0) { $0 + (live.egress[$1 + "." + dataType.name] ?? 0) }))
                        }
                        edges.append(
                            Edge(from: "type_" + MeshGraph.identifier(dataType.name), to: box.id, label: parts.joined(separator: " · "),
                                 style: style, penWidth: (penWidth * 10).rounded() / 10))
                    }
                }
            }
            self.edges = edges
        }
    }

    // MARK: - Graphviz

    static func dot(_ model: Model) -> String {
        var out: [String] = []
        out.append("digraph mesh {")
        out.append("  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=12, labelloc=t, label=\(quoted(model.title))];")
        out.append("  node [fontname=\"Helvetica\", fontsize=10];")
        out.append("  edge [fontname=\"Helvetica\", fontsize=9, color=\"#555555\"];")
        out.append("")
        for type in model.types {
            out.append(
                "  \(type.id) [shape=box, style=\"rounded,filled\", fillcolor=\"#fff4c2\", label=\(quoted(type.lines.joined(separator: "\n")))];")
        }
        out.append("")
        func serviceLine(_ box: ServiceBox, indent: String) -> String {
            var attributes = ["shape=box", "label=\(quoted(box.lines.joined(separator: "\n")))"]
            switch box.health {
            case nil:
                attributes.append(box.service.consumes.isEmpty ? "style=filled, fillcolor=\"#dbe9ff\"" : "style=filled, fillcolor=\"#e3f5e1\"")
            case .healthy: attributes.append("style=filled, fillcolor=\"#c8f0c0\", color=\"#2e7d32\"")
            case .stalled: attributes.append("style=\"filled,bold\", fillcolor=\"#ffe0a8\", color=\"#ef6c00\"")
            case .down: attributes.append("style=\"filled,dashed,bold\", fillcolor=\"#ffc9c9\", color=\"#c62828\"")
            }
            return "\(indent)\(box.id) [\(attributes.joined(separator: ", "))];"
        }
        if model.nodes.isEmpty {
            for box in model.services { out.append(serviceLine(box, indent: "  ")) }
        } else {
            for node in model.nodes {
                out.append("  subgraph cluster_\(identifier(node.name)) {")
                var label = "node \(node.name) · \(node.address)"
                if let zone = node.zone { label += " · zone \(zone)" }
                out.append("    graph [label=\(quoted(label)), style=\"rounded,dashed\", color=\"#888888\"];")
                for box in model.services where box.node == node.name { out.append(serviceLine(box, indent: "    ")) }
                out.append("  }")
            }
        }
        out.append("")
        for edge in model.edges {
            var attributes = ["label=\(quoted(edge.label))"]
            switch edge.style {
            case .solid: break
            case .dashed: attributes.append("style=dashed")
            case .dotted: attributes.append("style=dotted")
            }
            if edge.penWidth != 1 { attributes.append("penwidth=\(format(edge.penWidth))") }
            out.append("  \(edge.from) -> \(edge.to) [\(attributes.joined(separator: ", "))];")
        }
        out.append("}")
        return out.joined(separator: "\n") + "\n"
    }

    // MARK: - Mermaid

    static func mermaid(_ model: Model) -> String {
        var out: [String] = []
        out.append("---")
        out.append("title: \(model.title)")
        out.append("---")
        out.append("flowchart LR")
        for type in model.types {
            out.append("  \(type.id)([\"\(mermaidText(type.lines))\"])")
        }
        func serviceLine(_ box: ServiceBox, indent: String) -> String {
            "\(indent)\(box.id)[\"\(mermaidText(box.lines))\"]"
        }
        if model.nodes.isEmpty {
            for box in model.services { out.append(serviceLine(box, indent: "  ")) }
        } else {
            for node in model.nodes {
                var label = "node \(node.name) · \(node.address)"
                if let zone = node.zone { label += " · zone \(zone)" }
                out.append("  subgraph node_\(identifier(node.name))[\"\(mermaidText([label]))\"]")
                for box in model.services where box.node == node.name { out.append(serviceLine(box, indent: "    ")) }
                out.append("  end")
            }
        }
        for edge in model.edges {
            let arrow =
                switch edge.style {
                case .solid: "-->"
                case .dashed, .dotted: "-.->"
                }
            out.append("  \(edge.from) \(arrow)|\"\(mermaidText([edge.label]))\"| \(edge.to)")
        }
        out.append("  classDef type fill:#fff4c2,stroke:#b59a2a")
        out.append("  classDef producer fill:#dbe9ff,stroke:#4a6fa5")
        out.append("  classDef consumer fill:#e3f5e1,stroke:#4f8a4b")
        out.append("  classDef healthy fill:#c8f0c0,stroke:#2e7d32")
        out.append("  classDef stalled fill:#ffe0a8,stroke:#ef6c00,stroke-width:2px")
        out.append("  classDef down fill:#ffc9c9,stroke:#c62828,stroke-width:2px,stroke-dasharray:5 3")
        if !model.types.isEmpty { out.append("  class \(model.types.map(\.id).joined(separator: ",")) type") }
        var classes: [(String, [String])] = []
        for name in ["producer", "consumer", "healthy", "stalled", "down"] {
            let ids = model.services.filter { box in
                switch box.health {
                case nil: return name == (box.service.consumes.isEmpty ? "producer" : "consumer")
                case let health?: return name == health.rawValue
                }
            }.map(\.id)
            if !ids.isEmpty { classes.append((name, ids)) }
        }
        for (name, ids) in classes { out.append("  class \(ids.joined(separator: ",")) \(name)") }
        return out.joined(separator: "\n") + "\n"
    }

    // MARK: - Text helpers

    /// A Graphviz identifier for a spec name (`[a-z][a-z0-9-]*`): `-` becomes `_`, which no name contains.
    static func identifier(_ name: String) -> String {
        String(name.map { $0 == "-" ? "_" : $0 })
    }

    /// A Graphviz double-quoted string; `\n` separates centred lines.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for character in text {
            switch character {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out + "\""
    }

    /// Mermaid label text: lines joined by `<br/>`, quotes as the `#quot;` entity.
    static func mermaidText(_ lines: [String]) -> String {
        lines.map { $0.replacing("\"", with: "#quot;") }.joined(separator: "<br/>")
    }

    static func rate(_ perSecond: Double) -> String {
        "\(Int(perSecond.rounded())) msg/s"
    }

    static func bytes(_ value: Int) -> String {
        if value >= 1 << 20, value % (1 << 20) == 0 { return "\(value >> 20) MiB" }
        if value >= 1 << 10, value % (1 << 10) == 0 { return "\(value >> 10) KiB" }
        return "\(value) B"
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }
}

/// What the running router says, laid over ``MeshGraph``: health per instance, rates per pipe group.
public struct GraphLive: Hashable, Sendable {
    /// An instance's health as `router.json` reports it; ordered from best to worst.
    public enum Health: String, Hashable, Sendable, Comparable, CaseIterable {
        case healthy, stalled, down

        public static func < (a: Health, b: Health) -> Bool {
            allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
        }

        var mark: String {
            switch self {
            case .healthy: "✓"
            case .stalled: "!"
            case .down: "✗"
            }
        }
    }

    /// Instance name -> its worst health over its egress pipes. An instance missing here counts as down.
    public var instances: [String: Health]
    /// `instance.dataType` -> messages/s the router wrote to that egress pipe.
    public var egress: [String: Double]
    /// `producer.dataType` -> messages/s the router read from the producer's ingress pipes (all shards).
    public var ingress: [String: Double]
    /// Frames waiting for a healthy instance, by data type.
    public var waiting: [String: Int]

    public init(
        instances: [String: Health] = [:], egress: [String: Double] = [:], ingress: [String: Double] = [:], waiting: [String: Int] = [:]
    ) {
        self.instances = instances
        self.egress = egress
        self.ingress = ingress
        self.waiting = waiting
    }
}
