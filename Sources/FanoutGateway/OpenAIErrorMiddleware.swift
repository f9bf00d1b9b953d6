import Hummingbird

/// Errors Hummingbird raises itself (an unknown route, a body too large to
/// collect) in OpenAI's shape too, so an SDK can read every error the same way.
struct OpenAIErrorMiddleware: RouterMiddleware {
    typealias Context = GatewayContext

    func handle(_ request: Request, context: GatewayContext,
                next: (Request, GatewayContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            let message = error.body ?? (error.status == .notFound ? "Unknown request URL: \(request.method) \(request.uri.path)"
                                                                   : "The request failed: \(error.status.reasonPhrase)")
            throw GatewayError(status: error.status, type: "invalid_request_error", message: message,
                               code: error.status == .notFound ? "unknown_url" : nil, param: nil)
        }
    }
}
