// Package portcullis (module portcullis.dev/policy) holds the helpers for writing Portcullis
// policies in Go.
//
// The contract is wit/policy.wit, shipped in this module; the build (`build` in this module)
// generates its bindings (the packages wit_component/portcullis_policy_types and
// wit_component/portcullis_policy_host) with `wit-bindgen go` at every build, and the policy
// package implements the exports they expect (Describe, Init, Evaluate) with the generated
// types, so a change to the WIT that breaks a policy breaks its build. This package only makes
// those types pleasant: verdict constructors, options, JSON configuration and payloads,
// logging. It compiles only inside that build, beside the generated packages.
package portcullis

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	host "wit_component/portcullis_policy_host"
	types "wit_component/portcullis_policy_types"
)

// The generated types, under shorter names.
type (
	Message    = types.Message
	Verdict    = types.Verdict
	Identity   = types.Identity
	PluginInfo = types.PluginInfo
	Stage      = types.Stage
	Phase      = types.Phase
	// InitResult is what Init returns: ok, or the error the gateway logs.
	InitResult = witTypes.Result[witTypes.Unit, string]
)

// Stages and phases.
const (
	StageAuthn     = types.Stage_Authn
	StageAuthz     = types.Stage_Authz
	StageCustom    = types.Stage_Custom
	StageRouting   = types.Stage_Routing
	StageRedaction = types.Stage_Redaction

	PhaseRequest  = types.Phase_Request
	PhaseResponse = types.Phase_Response
)

// JSON-RPC error codes, as in the Rust SDK's `codes`.
const (
	InvalidRequest  int32 = -32600
	InvalidParams   int32 = -32602
	InternalError   int32 = -32603
	Denied          int32 = -32003
	Unauthenticated int32 = -32004
)

// Info is what the policy says about itself at load.
func Info(name, version string, stage Stage, phases ...Phase) PluginInfo {
	if len(phases) == 0 {
		phases = []Phase{PhaseRequest}
	}
	return PluginInfo{Name: name, Version: version, Stage: stage, Phases: phases}
}

// Validator is a configuration that checks itself beyond what decoding it checks.
type Validator interface {
	Validate() error
}

// ParseConfig decodes the sidecar's `[config]` (JSON) into `into`, a pointer to a struct with
// `json:"kebab-case"` tags, rejecting unknown keys, then runs its Validate method if it has
// one. Return its result from Init:
//
//	func Init(config string) portcullis.InitResult { return portcullis.ParseConfig(config, &settings) }
func ParseConfig(config string, into any) InitResult {
	dec := json.NewDecoder(bytes.NewReader([]byte(config)))
	dec.DisallowUnknownFields()
	err := dec.Decode(into)
	if err == nil {
		if v, ok := into.(Validator); ok {
			err = v.Validate()
		}
	}
	if err != nil {
		return witTypes.Err[witTypes.Unit](fmt.Sprintf("invalid config: %v", cleanJSONError(err)))
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

// cleanJSONError words encoding/json's errors like the other languages' helpers do.
func cleanJSONError(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return fmt.Errorf("%s: expected %s, got %s", typeErr.Field, typeErr.Type, typeErr.Value)
	}
	var msg string
	if _, e := fmt.Sscanf(err.Error(), "json: unknown field %q", &msg); e == nil {
		return fmt.Errorf("unknown field `%s`", msg)
	}
	return err
}

// Allow lets the message pass unchanged.
func Allow() Verdict { return types.MakeVerdictAllow() }

// Deny refuses the message: the client gets JSON-RPC error `code` with `message` and, when
// not nil, `data` (any value encoding/json can encode). Never put secrets in either.
func Deny(code int32, message string, data any) Verdict {
	return types.MakeVerdictDeny(types.Denial{
		Error: types.RpcError{Code: code, Message: message, Data: encode(data)},
		HttpStatus: witTypes.None[uint16](),
	})
}

// DenyHTTP refuses the message at the HTTP level (authn's 401, 403), with headers.
func DenyHTTP(status uint16, code int32, message string, headers map[string]string) Verdict {
	return types.MakeVerdictDeny(types.Denial{
		Error:       types.RpcError{Code: code, Message: message, Data: witTypes.None[string]()},
		HttpStatus:  witTypes.Some(status),
		HttpHeaders: pairs(headers),
	})
}

// Changes is what Modify changes; a field left at its zero value stays as it was.
type Changes struct {
	Params     any       // new request params (JSON-encodable), request phase
	Result     any       // new response result (JSON-encodable), response phase
	Identity   *Identity // the caller's identity from now on
	Upstream   string    // route to this upstream (routing)
	Target     string    // the target name at that upstream (routing)
	Attributes map[string]string
}

// Modify lets the message pass with changes.
func Modify(c Changes) Verdict {
	identity := witTypes.None[Identity]()
	if c.Identity != nil {
		identity = witTypes.Some(*c.Identity)
	}
	return types.MakeVerdictModify(types.Changes{
		Params:     encode(c.Params),
		Result:     encode(c.Result),
		Identity:   identity,
		Upstream:   optional(c.Upstream),
		Target:     optional(c.Target),
		Attributes: pairs(c.Attributes),
	})
}

// WithAttribute returns a copy of `id` with attribute `key` set to `value`.
func WithAttribute(id Identity, key, value string) Identity {
	attrs := make([]witTypes.Tuple2[string, string], 0, len(id.Attributes)+1)
	found := false
	for _, kv := range id.Attributes {
		if kv.F0 == key {
			kv.F1, found = value, true
		}
		attrs = append(attrs, kv)
	}
	if !found {
		attrs = append(attrs, witTypes.Tuple2[string, string]{F0: key, F1: value})
	}
	id.Attributes = attrs
	return id
}

// Params returns the request's params, decoded; ok is false when it had none.
func Params(msg *Message) (params any, ok bool) {
	text := msg.Params()
	if text.IsNone() || json.Unmarshal([]byte(text.Some()), &params) != nil {
		return nil, false
	}
	return params, true
}

// Arguments returns `params.arguments` of a `tools/call`, decoded; ok is false when absent
// (a JSON `null` argument list is present, and nil).
func Arguments(msg *Message) (arguments any, ok bool) {
	params, _ := Params(msg)
	if obj, isObj := params.(map[string]any); isObj {
		arguments, ok = obj["arguments"]
	}
	return arguments, ok
}

// Str returns an option's string, or `fallback` when it is none.
func Str(o witTypes.Option[string], fallback string) string { return o.SomeOr(fallback) }

// Logf writes a line to the gateway's log at level info, tagged with the policy's name.
func Logf(format string, args ...any) { host.Log(host.Level_Info, fmt.Sprintf(format, args...)) }

// Debugf, Warnf and Errorf: as Logf, at other levels.
func Debugf(format string, args ...any) { host.Log(host.Level_Debug, fmt.Sprintf(format, args...)) }
func Warnf(format string, args ...any)  { host.Log(host.Level_Warn, fmt.Sprintf(format, args...)) }
func Errorf(format string, args ...any) { host.Log(host.Level_Error, fmt.Sprintf(format, args...)) }

func encode(v any) witTypes.Option[string] {
	if v == nil {
		return witTypes.None[string]()
	}
	b, err := json.Marshal(v)
	if err != nil {
		return witTypes.None[string]()
	}
	return witTypes.Some(string(b))
}

func optional(s string) witTypes.Option[string] {
	if s == "" {
		return witTypes.None[string]()
	}
	return witTypes.Some(s)
}

// pairs turns a map into WIT key/value tuples, sorted by key so output is reproducible.
func pairs(m map[string]string) []witTypes.Tuple2[string, string] {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]witTypes.Tuple2[string, string], 0, len(keys))
	for _, k := range keys {
		out = append(out, witTypes.Tuple2[string, string]{F0: k, F1: m[k]})
	}
	return out
}
