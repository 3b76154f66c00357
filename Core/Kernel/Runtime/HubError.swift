/// A failure the kernel reports by its text alone: a component that cannot be set up or started, a file
/// in the data folder that cannot be written. Callers describe it; none tells one kind from another.
struct HubError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
