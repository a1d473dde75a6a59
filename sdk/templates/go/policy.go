// {{name}}: a Portcullis policy in Go.
//
// What it does (replace it with your rule): refuses any tool whose name contains one of the
// configured words (`delete` by default) unless the caller holds one of the configured roles
// (`admin` by default), and hides those tools from such a caller's `tools/list`.
//
// The build generates the contract's bindings and compiles this package among them: it must
// be named export_portcullis_policy_policy and define Describe, Init and Evaluate.
package export_portcullis_policy_policy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	portcullis "portcullis.dev/policy"
)

// config is the sidecar's [config] table (unknown keys are an error).
type config struct {
	Words []string `json:"words"`
	Roles []string `json:"roles"`
}

// Validate checks what decoding cannot; an error keeps the plugin out of the chain and goes
// to the gateway's log.
func (c *config) Validate() error {
	for _, list := range [][]string{c.Words, c.Roles} {
		if slices.Contains(list, "") {
			return fmt.Errorf("words and roles: expected non-empty strings")
		}
	}
	return nil
}

// Every evaluation runs in a fresh instance that starts with Init: keep what it parsed here.
var settings config

func Describe() portcullis.PluginInfo {
	return portcullis.Info("{{name}}", "0.1.0", portcullis.StageAuthz, portcullis.PhaseRequest, portcullis.PhaseResponse)
}

func Init(cfg string) portcullis.InitResult {
	settings = config{Words: []string{"delete"}, Roles: []string{"admin"}}
	return portcullis.ParseConfig(cfg, &settings)
}

func guarded(tool string) bool {
	return slices.ContainsFunc(settings.Words, func(w string) bool { return strings.Contains(tool, w) })
}

func Evaluate(msg *portcullis.Message) portcullis.Verdict {
	defer msg.Drop() // the message is lent for this call: give it back before returning
	if id := msg.Identity(); id.IsSome() && slices.ContainsFunc(id.Some().Roles, func(r string) bool {
		return slices.Contains(settings.Roles, r)
	}) {
		return portcullis.Allow()
	}
	switch {
	case msg.Phase() == portcullis.PhaseRequest && msg.Method() == "tools/call":
		tool := portcullis.Str(msg.Target(), "")
		if !guarded(tool) {
			return portcullis.Allow()
		}
		portcullis.Logf("refused %s", tool)
		return portcullis.Deny(portcullis.Denied, fmt.Sprintf("%s needs one of the roles %q", tool, settings.Roles), nil)
	case msg.Phase() == portcullis.PhaseResponse && msg.Method() == "tools/list":
		var result map[string]any
		if err := json.Unmarshal([]byte(portcullis.Str(msg.Result(), "null")), &result); err != nil {
			return portcullis.Allow()
		}
		tools, ok := result["tools"].([]any)
		if !ok {
			return portcullis.Allow()
		}
		kept := slices.DeleteFunc(slices.Clone(tools), func(t any) bool {
			name, _ := t.(map[string]any)["name"].(string)
			return guarded(name)
		})
		if len(kept) == len(tools) {
			return portcullis.Allow()
		}
		result["tools"] = kept
		return portcullis.Modify(portcullis.Changes{Result: result})
	}
	return portcullis.Allow()
}
