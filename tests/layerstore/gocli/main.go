// Renders output as the Docker CLI does, with Go's own packages, for the
// differential tests of layerstore's formatting: templates (text/template with
// the functions of the CLI's templates package) and tables (text/tabwriter with
// the CLI's settings); and reads what the CLI reads: image names, durations and
// the patterns of a reference filter.
//
// Reads one JSON request per line and answers one JSON line each:
//
//	{"template": ..., "data": ..., "strict": bool} -> {"out": ...} or {"stage": "parse"|"exec", "err": ...}
//	{"table": TEXT} -> {"out": ...}
//	{"unix": SECONDS, "zone": NAME} -> {"out": "<time.String()>|<RFC 3339>"} in that zone
//	{"rfc3339": TEXT} -> {"out": TEXT parsed and formatted again with RFC 3339 and nanoseconds}
//	{"reference": TEXT} -> {"out": "domain\npath\ntag\ndigest\nfamiliar form"} or {"stage": "parse", "err": ...},
//	  as the Docker CLI reads an image name (the reference package of Debian's docker-distribution)
//	{"duration": TEXT} -> {"out": nanoseconds} or {"stage": "parse", "err": ...}: time.ParseDuration
//	{"layout": L, "value": V, "zone": Z} -> {"out": "<unix seconds> <nanoseconds>"} or {"stage": "parse", "err": ...}:
//	  time.Parse, or time.ParseInLocation in the zone Z where one is named
//	{"pattern": P, "name": N} -> {"out": "true"|"false"} or {"stage": "parse", "err": ...}: path.Match,
//	  which images' reference filter uses
//	{"since": NANOSECONDS} -> {"out": ...}: go-units' HumanDuration, the CREATED column's words
//	{"size": BYTES, "precision": P} -> {"out": ...}: go-units' HumanSizeWithPrecision, the SIZE column's
//
// JSON numbers become int64 where they are whole, as the typed fields Docker's
// templates see are, and float64 otherwise.
package main

import (
	"bufio"
	"bytes"
	_ "crypto/sha256" // the digest algorithms a reference may name
	_ "crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/docker/distribution/reference"
	units "github.com/docker/go-units"
)

var basicFunctions = template.FuncMap{
	"json": func(v interface{}) string {
		buf := &bytes.Buffer{}
		enc := json.NewEncoder(buf)
		enc.SetEscapeHTML(false)
		enc.Encode(v)
		return strings.TrimSpace(buf.String())
	},
	"split":    strings.Split,
	"join":     strings.Join,
	"title":    strings.Title,
	"lower":    strings.ToLower,
	"upper":    strings.ToUpper,
	"pad":      padWithSpace,
	"truncate": truncateWithLength,
}

func padWithSpace(source string, prefix, suffix int) string {
	if source == "" {
		return source
	}
	return strings.Repeat(" ", prefix) + source + strings.Repeat(" ", suffix)
}

func truncateWithLength(source string, length int) string {
	if len(source) < length {
		return source
	}
	return source[:length]
}

type request struct {
	Table    *string         `json:"table"`
	Unix     *int64          `json:"unix"`
	RFC3339  *string         `json:"rfc3339"`
	Ref      *string         `json:"reference"`
	Pattern  *string         `json:"pattern"`
	Duration *string         `json:"duration"`
	Since    *int64          `json:"since"`
	Size     *float64        `json:"size"`
	Prec     int             `json:"precision"`
	Layout   *string         `json:"layout"`
	Value    string          `json:"value"`
	Name     string          `json:"name"`
	Zone     string          `json:"zone"`
	Template string          `json:"template"`
	Data     json.RawMessage `json:"data"`
	Strict   bool            `json:"strict"`
}

type answer struct {
	Out   *string `json:"out,omitempty"`
	Stage string  `json:"stage,omitempty"`
	Err   string  `json:"err,omitempty"`
}

func numbers(v interface{}) interface{} {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]interface{}:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []interface{}:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}

// table writes text through the tabwriter the Docker CLI's formatter uses.
func table(text string) answer {
	buf := &bytes.Buffer{}
	w := tabwriter.NewWriter(buf, 10, 1, 3, ' ', 0)
	w.Write([]byte(text))
	w.Flush()
	out := buf.String()
	return answer{Out: &out}
}

// clock shows a time as the Docker CLI does: time.Time's String and RFC 3339.
func clock(unix int64, zone string) answer {
	loc, err := time.LoadLocation(zone)
	if err != nil {
		return answer{Stage: "request", Err: err.Error()}
	}
	t := time.Unix(unix, 0).In(loc)
	out := t.String() + "|" + t.Format(time.RFC3339)
	return answer{Out: &out}
}

// named reads an image name as the Docker CLI's pull, tag and rmi do.
func named(text string) answer {
	ref, err := reference.ParseNormalizedNamed(text)
	if err != nil {
		return answer{Stage: "parse", Err: err.Error()}
	}
	tag, digest := "", ""
	if t, ok := ref.(reference.Tagged); ok {
		tag = t.Tag()
	}
	if d, ok := ref.(reference.Digested); ok {
		digest = d.Digest().String()
	}
	out := strings.Join([]string{reference.Domain(ref), reference.Path(ref), tag, digest, reference.FamiliarString(ref)}, "\n")
	return answer{Out: &out}
}

// parsed reads a time with a layout, in a zone where one is named.
func parsed(layout, value, zone string) answer {
	var t time.Time
	var err error
	if zone == "" {
		t, err = time.Parse(layout, value)
	} else {
		loc, lerr := time.LoadLocation(zone)
		if lerr != nil {
			return answer{Stage: "request", Err: lerr.Error()}
		}
		t, err = time.ParseInLocation(layout, value, loc)
	}
	if err != nil {
		return answer{Stage: "parse", Err: err.Error()}
	}
	out := fmt.Sprintf("%d %d", t.Unix(), t.Nanosecond())
	return answer{Out: &out}
}

func render(req request) answer {
	if req.Since != nil {
		out := units.HumanDuration(time.Duration(*req.Since))
		return answer{Out: &out}
	}
	if req.Size != nil {
		out := units.HumanSizeWithPrecision(*req.Size, req.Prec)
		return answer{Out: &out}
	}
	if req.Layout != nil {
		return parsed(*req.Layout, req.Value, req.Zone)
	}
	if req.Duration != nil {
		d, err := time.ParseDuration(*req.Duration)
		if err != nil {
			return answer{Stage: "parse", Err: err.Error()}
		}
		out := strconv.FormatInt(int64(d), 10)
		return answer{Out: &out}
	}
	if req.Pattern != nil {
		matched, err := path.Match(*req.Pattern, req.Name)
		if err != nil {
			return answer{Stage: "parse", Err: err.Error()}
		}
		out := "false"
		if matched {
			out = "true"
		}
		return answer{Out: &out}
	}
	if req.Ref != nil {
		return named(*req.Ref)
	}
	if req.Table != nil {
		return table(*req.Table)
	}
	if req.Unix != nil {
		return clock(*req.Unix, req.Zone)
	}
	if req.RFC3339 != nil {
		t, err := time.Parse(time.RFC3339Nano, *req.RFC3339)
		if err != nil {
			return answer{Stage: "parse", Err: err.Error()}
		}
		out := t.Format(time.RFC3339Nano)
		return answer{Out: &out}
	}
	dec := json.NewDecoder(bytes.NewReader(req.Data))
	dec.UseNumber()
	var data interface{}
	if err := dec.Decode(&data); err != nil {
		return answer{Stage: "data", Err: err.Error()}
	}
	data = numbers(data)
	tmpl := template.New("").Funcs(basicFunctions)
	if req.Strict {
		tmpl = tmpl.Option("missingkey=error")
	}
	tmpl, err := tmpl.Parse(req.Template)
	if err != nil {
		return answer{Stage: "parse", Err: err.Error()}
	}
	buf := &bytes.Buffer{}
	if err := tmpl.Execute(buf, data); err != nil {
		return answer{Stage: "exec", Err: err.Error()}
	}
	out := buf.String()
	return answer{Out: &out}
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			enc.Encode(answer{Stage: "request", Err: err.Error()})
			continue
		}
		enc.Encode(render(req))
	}
}
