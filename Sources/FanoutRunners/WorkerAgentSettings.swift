import FanoutCore
import Foundation

/// The `worker` runner's settings: the agent's tasks go to connected worker
/// sessions, and `worker_uids` says which users' workers may serve it
/// (always also root and the daemon's own user).
public enum WorkerAgentSettings {
    public static let keys: Set<String> = ["worker_uids"]

    /// The uids listed in `worker_uids`, checked.
    public static func allowedUIDs(_ object: [String: Any], agent: String) throws -> Set<UInt32> {
        guard let value = object["worker_uids"] else { return [] }
        guard let list = value as? [Any] else {
            throw FanoutError.invalidArgument("agent \"\(agent)\": worker_uids must be a list of user ids")
        }
        return try Set(list.map { item in
            guard let number = (item as? NSNumber)?.doubleValue, number == number.rounded(), number >= 0, number < 4_294_967_295 else {
                throw FanoutError.invalidArgument("agent \"\(agent)\": worker_uids must be a list of user ids, not \(item)")
            }
            return UInt32(number)
        })
    }
}
