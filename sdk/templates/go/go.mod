module {{name}}

go 1.24

require portcullis.dev/policy v0.1.0

// The Go SDK, from a local path until it is published.
replace portcullis.dev/policy => {{go_sdk}}
