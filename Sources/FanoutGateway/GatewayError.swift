import FanoutCore
import Foundation
import HTTPTypes
import Hummingbird

/// An error in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
/// with the matching HTTP status.
struct GatewayError: HTTPResponseError {
    var status: HTTPResponse.Status
    var type: String
    var message: String
    var code: String?
    var param: String?

    static func invalidRequest(_ message: String, code: String? = nil, param: String? = nil) -> GatewayError {
        GatewayError(status: .badRequest, type: "invalid_request_error", message: message, code: code, param: param)
    }

    static func notFound(_ message: String) -> GatewayError {
        GatewayError(status: .notFound, type: "invalid_request_error", message: message, code: "not_found", param: nil)
    }

    static func unauthenticated(_ message: String) -> GatewayError {
        GatewayError(status: .unauthorized, type: "invalid_request_error", message: message, code: "invalid_api_key", param: nil)
    }

    static func tooLarge(_ message: String) -> GatewayError {
        GatewayError(status: .contentTooLarge, type: "invalid_request_error", message: message, code: "file_too_large", param: nil)
    }

    /// A scheduler or store error, as OpenAI would say it.
    init(_ error: FanoutError) {
        switch error.kind {
        case .invalidArgument, .failedPrecondition:
            self.init(status: .badRequest, type: "invalid_request_error", message: error.message, code: nil, param: nil)
        case .notFound:
            self.init(status: .notFound, type: "invalid_request_error", message: error.message, code: "not_found", param: nil)
        case .permissionDenied:
            self.init(status: .forbidden, type: "invalid_request_error", message: error.message, code: "permission_denied", param: nil)
        case .resourceExhausted:
            // The daemon's limits on input (sizes, counts): a request to change, not one to retry.
            self.init(status: .badRequest, type: "invalid_request_error", message: error.message, code: "limit_exceeded", param: nil)
        case .alreadyExists:
            self.init(status: .conflict, type: "invalid_request_error", message: error.message, code: nil, param: nil)
        case .unavailable:
            self.init(status: .serviceUnavailable, type: "server_error", message: error.message, code: nil, param: nil)
        case .internal:
            self.init(status: .internalServerError, type: "server_error", message: error.message, code: nil, param: nil)
        }
    }

    init(status: HTTPResponse.Status, type: String, message: String, code: String?, param: String?) {
        self.status = status
        self.type = type
        self.message = message
        self.code = code
        self.param = param
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        let error: [String: Any] = ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()]
        return JSONResponse.make(["error": error], status: status)
    }
}

/// JSON answers built from plain dictionaries, in OpenAI's field names.
enum JSONResponse {
    static func make(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
