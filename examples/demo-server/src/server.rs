//! The demo server's tools, prompt, resources and completions.

// Logging (`logging/setLevel`, `notifications/message`) is deprecated by SEP-2577 for the
// 2026-07-28 protocol, but it is how every earlier protocol revision carries log lines,
// and the demo shows it off.
#![allow(deprecated)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    handler::server::{
        router::{prompt::PromptRouter, tool::ToolRouter},
        tool::schema_for_output,
        wrapper::{Json, Parameters},
    },
    model::{
        CallToolResult, CompleteRequestParams, CompleteResult, CompletionInfo, ContentBlock,
        Implementation, ListResourceTemplatesResult, ListResourcesResult, LoggingLevel,
        LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
        PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
        Reference, Resource, ResourceContents, ResourceTemplate, Role, ServerCapabilities,
        ServerConfig, SetLevelRequestParams,
    },
    prompt, prompt_handler, prompt_router,
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const README_URI: &str = "demo://readme";
const CITIES_URI: &str = "demo://cities";
const GREETING_TEMPLATE: &str = "demo://greeting/{name}";
const GREETING_PREFIX: &str = "demo://greeting/";

const README: &str = "# Portcullis demo server\n\n\
This upstream exists so that a fresh Portcullis install has something to talk to.\n\n\
- `echo` returns its text.\n\
- `add` adds two numbers (structured result).\n\
- `get_weather` invents a forecast for a city; nothing here is real.\n\
- `slow_count` counts slowly, with progress notifications and log lines.\n\
- The `review_code` prompt asks a model to review a snippet.\n\
- `demo://greeting/{name}` greets whoever you name.\n";

/// Cities `get_weather` and the `demo://cities` resource suggest; any other name works too.
const CITIES: &[&str] = &[
    "Amsterdam",
    "Berlin",
    "Cairo",
    "Lagos",
    "Lima",
    "Oslo",
    "Paris",
    "Seoul",
    "Sydney",
    "Tokyo",
];

const LANGUAGES: &[&str] = &[
    "c",
    "cpp",
    "go",
    "java",
    "javascript",
    "python",
    "ruby",
    "rust",
    "typescript",
];

/// The demo MCP server. One value serves one client session.
pub struct DemoServer {
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
    /// The least severe level the client wants to see (`logging/setLevel`), as a rank.
    min_log_level: Arc<AtomicU8>,
}

impl Default for DemoServer {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AddArgs {
    /// The first addend.
    a: f64,
    /// The second addend.
    b: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
struct AddOutput {
    /// `a + b`.
    sum: f64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Units {
    #[default]
    Celsius,
    Fahrenheit,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct WeatherArgs {
    /// The city to invent weather for.
    city: String,
    /// Temperature units; celsius when omitted.
    #[serde(default)]
    units: Option<Units>,
}

#[derive(Debug, Serialize, JsonSchema)]
struct Weather {
    city: String,
    temperature: f64,
    units: Units,
    conditions: String,
    /// Relative humidity, in percent.
    humidity: u8,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SlowCountArgs {
    /// Count from 1 up to this number (1 to 100; 5 when omitted).
    #[serde(default)]
    to: Option<u32>,
    /// Milliseconds between steps (at most 10000; 250 when omitted).
    #[serde(default)]
    interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ReviewCodeArgs {
    /// The code to review.
    code: String,
    /// The programming language of the code, if known.
    #[serde(default)]
    language: Option<String>,
}

#[tool_router]
impl DemoServer {
    /// A fresh server with logging at `info`.
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
            min_log_level: Arc::new(AtomicU8::new(level_rank(LoggingLevel::Info))),
        }
    }

    #[tool(
        description = "Return the given text unchanged.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(
        description = "Add two numbers. Returns the sum as structured content and as text.",
        output_schema = schema_for_output::<AddOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> CallToolResult {
        let sum = a + b;
        let mut result =
            CallToolResult::success(vec![ContentBlock::text(format!("{a} + {b} = {sum}"))]);
        result.structured_content = Some(json!(AddOutput { sum }));
        result
    }

    #[tool(
        description = "Invent today's weather for a city. The data is fake but stable: \
                       the same city always gets the same forecast.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    fn get_weather(
        &self,
        Parameters(WeatherArgs { city, units }): Parameters<WeatherArgs>,
    ) -> Json<Weather> {
        let units = units.unwrap_or_default();
        let seed = fnv1a(city.trim().to_lowercase().as_bytes());
        let celsius = (seed % 40) as f64 - 5.0;
        let temperature = match units {
            Units::Celsius => celsius,
            Units::Fahrenheit => celsius * 9.0 / 5.0 + 32.0,
        };
        let conditions = ["sunny", "cloudy", "light rain", "windy", "foggy", "snow"];
        let conditions = conditions[(seed >> 8) as usize % conditions.len()].to_owned();
        let humidity = 20 + ((seed >> 16) % 71) as u8;
        Json(Weather {
            city,
            temperature,
            units,
            conditions,
            humidity,
        })
    }

    #[tool(
        description = "Count slowly from 1 to `to`, sending a progress notification (when the \
                       call carries a progress token) and a log message at each step. \
                       Stops early if the call is cancelled.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn slow_count(
        &self,
        Parameters(args): Parameters<SlowCountArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let to = args.to.unwrap_or(5);
        if !(1..=100).contains(&to) {
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                "`to` must be between 1 and 100",
            )]));
        }
        let interval = Duration::from_millis(args.interval_ms.unwrap_or(250).min(10_000));
        let progress_token = context.meta.get_progress_token();
        for step in 1..=to {
            tokio::select! {
                () = context.ct.cancelled() => {
                    return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                        "cancelled after {} of {to}",
                        step - 1
                    ))]));
                }
                () = tokio::time::sleep(interval) => {}
            }
            if let Some(token) = &progress_token {
                // A client that has gone away cannot be told; the count goes on regardless.
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(step))
                            .with_total(f64::from(to))
                            .with_message(format!("counted {step} of {to}")),
                    )
                    .await;
            }
            self.log(
                &context,
                LoggingLevel::Info,
                json!({ "step": step, "of": to }),
            )
            .await;
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "counted to {to}"
        ))]))
    }
}

#[prompt_router]
impl DemoServer {
    /// Ask the model to review a piece of code for bugs, clarity and style.
    #[prompt(name = "review_code")]
    async fn review_code(
        &self,
        Parameters(ReviewCodeArgs { code, language }): Parameters<ReviewCodeArgs>,
    ) -> Vec<PromptMessage> {
        let language = language.unwrap_or_default();
        let intro = if language.is_empty() {
            "Please review the following code.".to_owned()
        } else {
            format!("Please review the following {language} code.")
        };
        vec![PromptMessage::new_text(
            Role::User,
            format!(
                "{intro} Point out bugs first, then anything hard to read, then style.\n\n\
                 ```{language}\n{code}\n```"
            ),
        )]
    }
}

impl DemoServer {
    /// Sends a `notifications/message` if the client asked for `level` or more severe.
    async fn log(
        &self,
        context: &RequestContext<RoleServer>,
        level: LoggingLevel,
        data: serde_json::Value,
    ) {
        if level_rank(level) < self.min_log_level.load(Ordering::Relaxed) {
            return;
        }
        let message =
            LoggingMessageNotificationParam::new(level, data).with_logger("portcullis-demo");
        // Log lines are best effort: a closed connection is noticed by the request itself.
        let _ = context.peer.notify_logging_message(message).await;
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_resources()
                .enable_tools()
                .build(),
        )
        .with_server_info(
            Implementation::new("portcullis-demo-server", env!("CARGO_PKG_VERSION"))
                .with_title("Portcullis demo server"),
        )
        .with_instructions(
            "A demo upstream with harmless fake data: echo, add, get_weather and slow_count \
             tools, a review_code prompt, and demo:// resources.",
        )
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.min_log_level
            .store(level_rank(request.level), Ordering::Relaxed);
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(README_URI, "readme")
                .with_title("About the demo server")
                .with_description("What this server offers, in Markdown.")
                .with_mime_type("text/markdown"),
            Resource::new(CITIES_URI, "cities")
                .with_title("Suggested cities")
                .with_description("Cities get_weather knows by heart (any name works).")
                .with_mime_type("application/json"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(GREETING_TEMPLATE, "greeting")
                .with_title("A greeting")
                .with_description("A short greeting for `name`.")
                .with_mime_type("text/plain"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let contents = match uri.as_str() {
            README_URI => ResourceContents::text(README, &uri).with_mime_type("text/markdown"),
            CITIES_URI => ResourceContents::text(json!(CITIES).to_string(), &uri)
                .with_mime_type("application/json"),
            _ => match uri.strip_prefix(GREETING_PREFIX) {
                Some(name) if !name.is_empty() && !name.contains('/') => {
                    ResourceContents::text(format!("Hello, {name}! Welcome to Portcullis."), &uri)
                }
                _ => {
                    return Err(McpError::resource_not_found(
                        format!("no resource at {uri}"),
                        Some(json!({ "uri": uri })),
                    ));
                }
            },
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let candidates: &[&str] = match (&request.r#ref, request.argument.name.as_str()) {
            (Reference::Prompt(prompt), "language") if prompt.name == "review_code" => LANGUAGES,
            (Reference::Resource(resource), "name") if resource.uri == GREETING_TEMPLATE => {
                &["Ada", "Alan", "Grace", "Linus", "Margaret"]
            }
            _ => &[],
        };
        let typed = request.argument.value.to_lowercase();
        let values = candidates
            .iter()
            .filter(|candidate| candidate.to_lowercase().starts_with(&typed))
            .map(|candidate| (*candidate).to_owned())
            .collect();
        let completion = CompletionInfo::with_all_values(values)
            .map_err(|message| McpError::internal_error(message, None))?;
        Ok(CompleteResult::new(completion))
    }
}

/// Severity rank of a log level: debug is 0, emergency 7.
fn level_rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// 32-bit FNV-1a: a stable hash, so the fake weather does not change between runs.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weather_is_stable_and_in_range() {
        let server = DemoServer::new();
        let ask = |city: &str| {
            server
                .get_weather(Parameters(WeatherArgs {
                    city: city.to_owned(),
                    units: None,
                }))
                .0
        };
        let first = ask("Oslo");
        let again = ask("  oslo ");
        assert_eq!(first.temperature, again.temperature);
        assert_eq!(first.conditions, again.conditions);
        assert!((-5.0..35.0).contains(&first.temperature));
        assert!((20..=90).contains(&first.humidity));
    }

    #[test]
    fn add_reports_structured_and_text() {
        let result = DemoServer::new().add(Parameters(AddArgs { a: 2.0, b: 3.5 }));
        assert_eq!(result.structured_content, Some(json!({ "sum": 5.5 })));
        assert_eq!(
            result.content[0].as_text().map(|t| t.text.as_str()),
            Some("2 + 3.5 = 5.5")
        );
    }

    #[test]
    fn level_ranks_are_ordered() {
        assert!(level_rank(LoggingLevel::Debug) < level_rank(LoggingLevel::Info));
        assert!(level_rank(LoggingLevel::Alert) < level_rank(LoggingLevel::Emergency));
    }
}
