// path-guard, in Go: refuses a `tools/call` whose arguments name a filesystem path outside
// the allowed folders, and tags the calls it checked for later stages.
//
// The same policy as examples/policies/rust (the reference): same settings, same verdicts,
// same error, same attributes. A string argument (at any depth; object keys in sorted order)
// counts as a path when it starts with `/`, `~` or `file://`, or has a `..` component. Paths
// are resolved lexically and compared component by component with `allowed-prefixes`.
//
// wit-bindgen go expects the exports (Describe, Init, Evaluate) in this package; the build
// (sdk/go/build, which examples/policies/build runs) puts this file there, beside the
// freshly generated bindings.
package export_portcullis_policy_policy

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	portcullis "portcullis.dev/policy"
)

const (
	// Checked is set on every call path-guard checked and let through.
	Checked = "path-guard.checked"
	// Paths gives how many path arguments the call had.
	Paths = "path-guard.paths"
)

type root int

const (
	absolute root = iota
	home
	relative
)

// normalPath is a path reduced to its root and components, `.` and `..` resolved.
type normalPath struct {
	root  root
	parts []string
}

func split(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == '/' || r == '\\' })
}

// normalize resolves `.` and `..`; ok is false when `..` climbs above the root.
func normalize(path string) (p normalPath, ok bool) {
	path = strings.TrimPrefix(path, "file://")
	rest := path
	switch {
	case strings.HasPrefix(path, "~"):
		p.root, rest = home, path[1:]
	case strings.HasPrefix(path, "/") || strings.HasPrefix(path, "\\"):
		p.root = absolute
	default:
		p.root = relative
	}
	for _, part := range split(rest) {
		switch part {
		case ".":
		case "..":
			if len(p.parts) == 0 {
				return p, false
			}
			p.parts = p.parts[:len(p.parts)-1]
		default:
			p.parts = append(p.parts, part)
		}
	}
	return p, true
}

func (p normalPath) inside(folder normalPath) bool {
	if p.root == relative || p.root != folder.root || len(p.parts) < len(folder.parts) {
		return false
	}
	for i, part := range folder.parts {
		if p.parts[i] != part {
			return false
		}
	}
	return true
}

// looksLikePath: starts with `/`, `~` or `file://`, or has a `..` component.
func looksLikePath(s string) bool {
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, "~") || strings.HasPrefix(s, "file://") {
		return true
	}
	for _, part := range split(s) {
		if part == ".." {
			return true
		}
	}
	return false
}

func isAllowed(path string, allowed []normalPath) bool {
	p, ok := normalize(path)
	if !ok {
		return false
	}
	for _, folder := range allowed {
		if p.inside(folder) {
			return true
		}
	}
	return false
}

// firstOutside returns where the first path outside `allowed` is (e.g. `files[1].src`),
// depth first, object keys in sorted order.
func firstOutside(value any, allowed []normalPath, at string) (string, bool) {
	switch v := value.(type) {
	case string:
		if looksLikePath(v) && !isAllowed(v, allowed) {
			return at, true
		}
	case []any:
		for i, item := range v {
			if found, ok := firstOutside(item, allowed, fmt.Sprintf("%s[%d]", at, i)); ok {
				return found, true
			}
		}
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			next := k
			if at != "" {
				next = at + "." + k
			}
			if found, ok := firstOutside(v[k], allowed, next); ok {
				return found, true
			}
		}
	}
	return "", false
}

func countPaths(value any) int {
	n := 0
	switch v := value.(type) {
	case string:
		if looksLikePath(v) {
			n = 1
		}
	case []any:
		for _, item := range v {
			n += countPaths(item)
		}
	case map[string]any:
		for _, item := range v {
			n += countPaths(item)
		}
	}
	return n
}

// config is the sidecar's `[config]` table.
type config struct {
	AllowedPrefixes []string `json:"allowed-prefixes"`
	TagIdentity     bool     `json:"tag-identity"`
	allowed         []normalPath
}

// Validate parses the allowed folders once per instance.
func (c *config) Validate() error {
	for _, prefix := range c.AllowedPrefixes {
		folder, ok := normalize(prefix)
		if !ok || folder.root == relative {
			return fmt.Errorf("allowed-prefixes: %q must be an absolute path or start with `~`", prefix)
		}
		c.allowed = append(c.allowed, folder)
	}
	return nil
}

var settings config

func Describe() portcullis.PluginInfo {
	return portcullis.Info("path-guard", "0.1.0", portcullis.StageAuthz, portcullis.PhaseRequest)
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
	args, ok := portcullis.Arguments(msg)
	if !ok {
		return portcullis.Allow()
	}
	if at, outside := firstOutside(args, settings.allowed, ""); outside {
		portcullis.Logf("refused %s: argument %s is outside the allowed folders", portcullis.Str(msg.Target(), "?"), at)
		return portcullis.Deny(portcullis.Denied,
			fmt.Sprintf("path-guard: argument `%s` names a path outside the allowed folders", at),
			map[string]string{"argument": at})
	}
	changes := portcullis.Changes{Attributes: map[string]string{
		Checked: "true",
		Paths:   strconv.Itoa(countPaths(args)),
	}}
	if identity := msg.Identity(); settings.TagIdentity && identity.IsSome() {
		tagged := portcullis.WithAttribute(identity.Some(), Checked, "true")
		changes.Identity = &tagged
	}
	return portcullis.Modify(changes)
}
