//! JSON-RPC and MCP error codes the gateway produces.

/// The body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON that is not a valid JSON-RPC message.
pub const INVALID_REQUEST: i64 = -32600;
/// Unknown method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters, including an unknown tool or prompt name (MCP spec).
pub const INVALID_PARAMS: i64 = -32602;
/// An internal failure, including an upstream that is down, crashed or too slow.
pub const INTERNAL_ERROR: i64 = -32603;
/// `resources/read` of a URI no upstream serves (MCP spec).
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// The client cancelled the request (`notifications/cancelled`).
pub const REQUEST_CANCELLED: i64 = -32800;
/// 2026-07-28: the HTTP headers do not match the body, or a required header is missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the request needs a client capability the client did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// 2026-07-28: the requested protocol version is not one the gateway serves.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
