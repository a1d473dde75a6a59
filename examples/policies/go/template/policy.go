// A Portcullis policy in Go: copy this folder, rename, edit, build.
//
//	cp -r examples/policies/go/template my-policy
//	examples/policies/build go my-policy -o my-policy.wasm
//	portcullis plugin test my-policy.wasm --config my-policy/sidecar.toml --message call.json
//
// What it does (replace with yours): refuses calls to the tools listed in `blocked`, and tags
// every other tool call with `template.checked` for later stages.
//
// wit-bindgen go wants the exports (Describe, Init, Evaluate, with exactly the generated
// types) in this package; the build generates the bindings from wit/ and compiles this file
// against them.
package export_portcullis_policy_policy

import (
	"fmt"
	"slices"

	"wit_component/portcullis"
)

// config is the sidecar's [config] table (keys in kebab-case; unknown keys are an error).
type config struct {
	Blocked []string `json:"blocked"`
}

// Validate checks what decoding cannot; an error keeps the plugin out of the chain.
func (c *config) Validate() error {
	for _, tool := range c.Blocked {
		if tool == "" {
			return fmt.Errorf("blocked: an empty tool name")
		}
	}
	return nil
}

// Every evaluation runs in a fresh instance that starts with Init.
var settings config

func Describe() portcullis.PluginInfo {
	return portcullis.Info("template", "0.1.0", portcullis.StageCustom, portcullis.PhaseRequest)
}

func Init(cfg string) portcullis.InitResult {
	settings = config{}
	return portcullis.ParseConfig(cfg, &settings)
}

func Evaluate(msg *portcullis.Message) portcullis.Verdict {
	defer msg.Drop() // the message is lent for this call: give it back before returning
	if msg.Method() != "tools/call" {
		return portcullis.Allow()
	}
	tool := portcullis.Str(msg.Target(), "")
	if slices.Contains(settings.Blocked, tool) {
		portcullis.Logf("blocked a call to %s", tool)
		return portcullis.Deny(portcullis.Denied, tool+" is disabled here", nil)
	}
	return portcullis.Modify(portcullis.Changes{Attributes: map[string]string{"template.checked": "true"}})
}
