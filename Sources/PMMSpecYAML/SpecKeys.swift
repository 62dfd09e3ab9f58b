/// The keys each kind of mapping in `mesh.yaml` accepts. The loader rejects any other key, and a test keeps
/// `schemas/mesh.schema.json` in step with this table.
public enum SpecKeys {
    public static let document = [
        "apiVersion", "kind", "name", "root", "routerGroup", "adminUid", "dataTypes", "services", "routes", "nodes", "links",
    ]
    public static let documentRequired = ["apiVersion", "kind", "name", "root"]
    public static let dataType = ["shards", "compatibility", "versions", "qos"]
    public static let version = ["version", "schema", "message"]
    public static let versionRequired = ["version", "schema", "message"]
    public static let qos = ["delivery", "maxRate", "burst", "buffer", "overflow", "pipeSize"]
    public static let service = ["uid", "gid", "replicas", "produces", "consumes", "registration", "placement"]
    public static let serviceRequired = ["uid"]
    public static let binding = ["dataType", "version", "qos", "capacity"]
    public static let bindingRequired = ["dataType"]
    public static let route = ["policy", "targets", "locality"]
    public static let routeRequired = ["targets"]
    public static let target = ["service", "weight"]
    public static let targetRequired = ["service"]
    public static let node = ["address", "labels"]
    public static let nodeRequired = ["address"]
    public static let links = ["tls"]
    public static let tls = ["ca", "cert", "key"]
    public static let tlsRequired = ["ca", "cert", "key"]

    /// Every mapping kind by the name `mesh.schema.json` gives its definition (`$defs`), with its keys.
    public static let byDefinition: [String: [String]] = [
        "mesh": document, "dataType": dataType, "version": version, "qos": qos, "service": service,
        "binding": binding, "route": route, "target": target, "node": node, "links": links, "tls": tls,
    ]
}
