// k8s-check decodes the Prometheus Operator custom resources in the given YAML files strictly
// against the Operator's own Go API types (github.com/prometheus-operator/prometheus-operator/
// pkg/apis/monitoring): a field the types do not have, or a value of the wrong type, is an error.
// Decoding is the API server's own: sigs.k8s.io/json, case-sensitive (encoding/json would take
// "groupby" for groupBy), unknown and duplicate fields refused. Documents of other kinds are
// skipped (they are checked against Kubernetes' OpenAPI schemas).
//
// Usage: k8s-check FILE...   exit 0 all passed, 1 a document failed, 2 usage or unreadable file.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	monitoringv1alpha1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1alpha1"
	"k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"
)

// version is the Operator API module version, stamped by scripts/install-tools.sh.
var version = "dev"

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// strict decodes JSON into obj as the API server does for a strict field validation request.
func strict(doc []byte, obj any) error {
	strictErrs, err := kjson.UnmarshalStrict(doc, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// decoders: apiVersion/kind -> strict decode (of the document as JSON) plus the types' own checks.
var decoders = map[string]func([]byte) error{
	"monitoring.coreos.com/v1/PrometheusRule": func(doc []byte) error {
		return strict(doc, &monitoringv1.PrometheusRule{})
	},
	"monitoring.coreos.com/v1/ServiceMonitor": func(doc []byte) error {
		return strict(doc, &monitoringv1.ServiceMonitor{})
	},
	"monitoring.coreos.com/v1/PodMonitor": func(doc []byte) error {
		return strict(doc, &monitoringv1.PodMonitor{})
	},
	"monitoring.coreos.com/v1alpha1/AlertmanagerConfig": func(doc []byte) error {
		var obj monitoringv1alpha1.AlertmanagerConfig
		if err := strict(doc, &obj); err != nil {
			return err
		}
		return checkAlertmanagerConfig(&obj)
	},
}

// checkAlertmanagerConfig decodes child routes (raw JSON in the type, as the CRD schema cannot
// recurse) strictly, and runs the matcher and receiver checks the types carry.
func checkAlertmanagerConfig(obj *monitoringv1alpha1.AlertmanagerConfig) error {
	var errs []error
	if obj.Spec.Route != nil {
		errs = append(errs, checkRoute(obj.Spec.Route, "spec.route"))
	}
	for i, rule := range obj.Spec.InhibitRules {
		for j, m := range append(append([]monitoringv1alpha1.Matcher{}, rule.SourceMatch...), rule.TargetMatch...) {
			if err := m.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("spec.inhibitRules[%d] matcher %d: %w", i, j, err))
			}
		}
	}
	for i, receiver := range obj.Spec.Receivers {
		for j := range receiver.SlackConfigs {
			if err := receiver.SlackConfigs[j].Validate(); err != nil {
				errs = append(errs, fmt.Errorf("spec.receivers[%d].slackConfigs[%d]: %w", i, j, err))
			}
		}
	}
	return errors.Join(errs...)
}

func checkRoute(route *monitoringv1alpha1.Route, where string) error {
	var errs []error
	for i, m := range route.Matchers {
		if err := m.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s.matchers[%d]: %w", where, i, err))
		}
	}
	// Child routes are raw JSON in the type (the CRD schema cannot recurse): decode each strictly.
	for i, raw := range route.Routes {
		var child monitoringv1alpha1.Route
		path := fmt.Sprintf("%s.routes[%d]", where, i)
		if err := strict(raw.Raw, &child); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		errs = append(errs, checkRoute(&child, path))
	}
	return errors.Join(errs...)
}

func checkFile(path string) (checked int, problems []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, nil, err
	}
	reader := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for index := 0; ; index++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return checked, problems, fmt.Errorf("%s: document %d: %w", path, index, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		doc, err = sigsyaml.YAMLToJSONStrict(doc) // duplicate keys refused
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: document %d: %v", path, index, err))
			continue
		}
		var h header
		if err := kjson.UnmarshalCaseSensitivePreserveInts(doc, &h); err != nil {
			problems = append(problems, fmt.Sprintf("%s: document %d: %v", path, index, err))
			continue
		}
		decode, ok := decoders[h.APIVersion+"/"+h.Kind]
		if !ok {
			if strings.HasPrefix(h.APIVersion, "monitoring.coreos.com/") {
				problems = append(problems, fmt.Sprintf("%s: document %d: %s %s is not a kind this checker knows", path, index, h.APIVersion, h.Kind))
			}
			continue
		}
		checked++
		if err := decode(doc); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %s (document %d): %v", path, h.Kind, index, err))
		}
	}
	return checked, problems, nil
}

func main() {
	args := os.Args[1:]
	if len(args) == 1 && (args[0] == "--version" || args[0] == "version") {
		fmt.Printf("k8s-check %s (prometheus-operator pkg/apis/monitoring %s)\n", version, version)
		return
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: k8s-check FILE...")
		os.Exit(2)
	}
	total, failed := 0, false
	for _, path := range args {
		checked, problems, err := checkFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "k8s-check:", err)
			os.Exit(2)
		}
		total += checked
		for _, p := range problems {
			fmt.Println(p)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
	fmt.Printf("k8s-check: %d Prometheus Operator object(s) decoded strictly, no problems\n", total)
}
