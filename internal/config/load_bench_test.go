package config

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config/gen"
	"github.com/pelletier/go-toml/v2/unstable"
)

// generated returns a config of n rules of kind ("port" or "sni"), as
// tools/genconfig writes it.
func generated(tb testing.TB, n int, kind string) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := gen.Write(&b, gen.Options{Rules: n, Kind: kind, BasePort: 10000, BackendPort: 40000}); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// BenchmarkLoad parses and validates generated configs of 1k, 10k and 50k
// rules: the time per op should grow in proportion to the rules.
// docs/BENCHMARKS.md, "Config loading", has the figures and the command.
func BenchmarkLoad(b *testing.B) {
	for _, kind := range []string{"port", "sni"} {
		for _, n := range []int{1000, 10000, 50000} {
			data := generated(b, n, kind)
			b.Run(fmt.Sprintf("%s/%dk", kind, n/1000), func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					cfg, err := Parse("bench.toml", data)
					if err != nil {
						b.Fatal(err)
					}
					if len(cfg.Rules) != n {
						b.Fatalf("%d rules, want %d", len(cfg.Rules), n)
					}
				}
			})
		}
	}
}

// lineOfText is the 1-based line where the nth (0-based) occurrence of s
// starts in data.
func lineOfText(t *testing.T, data []byte, s string, nth int) int {
	t.Helper()
	off := 0
	for k := 0; ; k++ {
		i := bytes.Index(data[off:], []byte(s))
		if i < 0 {
			t.Fatalf("%q: only %d occurrences", s, k)
		}
		if k == nth {
			return 1 + bytes.Count(data[:off+i], []byte("\n"))
		}
		off += i + len(s)
	}
}

// TestPositionsLargeFile checks the lines of keys deep in a generated file
// of 20,000 rules against the lines where their text stands, and an error
// in the last rule against the line of the bad value.
func TestPositionsLargeFile(t *testing.T) {
	const n = 20000
	data := generated(t, n, "sni")
	pos := indexPositions(data)
	for _, i := range []int{0, 1, 7777, 12345, n - 1} {
		name := fmt.Sprintf("name = \"rule-%d\"\n", i)
		nameLine := lineOfText(t, data, name, 0)
		namesLine := lineOfText(t, data, fmt.Sprintf(`names = ["r%d.example.com"`, i), 0)
		for path, want := range map[string]int{
			fmt.Sprintf("rules[%d]", i):                     nameLine - 1, // [[rules]]
			fmt.Sprintf("rules[%d].name", i):                nameLine,
			fmt.Sprintf("rules[%d].backends[0]", i):         nameLine + 2, // [[rules.backends]]
			fmt.Sprintf("rules[%d].backends[0].id", i):      nameLine + 3,
			fmt.Sprintf("rules[%d].backends[0].address", i): nameLine + 4,
			fmt.Sprintf("rules[%d].matcher", i):             namesLine - 2, // [rules.matcher]
			fmt.Sprintf("rules[%d].matcher.type", i):        namesLine - 1,
			fmt.Sprintf("rules[%d].matcher.names[1]", i):    namesLine,
			// Keys the file does not have: the line of the nearest parent.
			fmt.Sprintf("rules[%d].backends[0].weight", i): nameLine + 2,
			fmt.Sprintf("rules[%d].matcher.port", i):       namesLine - 2,
		} {
			if got := pos.line(path); got != want {
				t.Errorf("%s: line %d, want %d", path, got, want)
			}
		}
	}

	// The same file with the last rule's backend address broken: the error
	// names that line.
	bad := bytes.Replace(data, []byte(fmt.Sprintf("address = \"127.0.0.1:%d\"", 40000+(n-1)%20000)), []byte(`address = "127.0.0.1"`), 1)
	_, err := Parse("big.toml", bad)
	want := fmt.Sprintf("big.toml:%d: rules[%d].backends[0].address: ", lineOfText(t, bad, `address = "127.0.0.1"`, 0), n-1)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %v, want one starting %q", err, want)
	}
}

// TestLineIndexMatchesParser checks that the newline index gives the line
// go-toml's own Parser.Shape gives, for every node of a document with
// comments, multi-line strings and arrays, CRLF line ends and no final newline.
func TestLineIndexMatchesParser(t *testing.T) {
	doc := strings.Join([]string{
		"# comment", "[server]", `tcp_bind = "127.0.0.1:1"  # trailing`, "",
		`[[rules]]`, `name = """multi`, `line"""`, "names = [", `  "a",`, "", `  "b" ]`,
		"\r", "x = { a = 1,\tb = [1,\r\n 2] }", "[[rules]]\r", `name = 'z'`,
	}, "\n")
	data := []byte(doc)
	lines := newLineIndex(data)
	p := unstable.Parser{}
	p.Reset(data)
	checked := 0
	var walk func(n *unstable.Node)
	walk = func(n *unstable.Node) {
		if n.Raw.Length > 0 || n.Raw.Offset > 0 {
			if got, want := lines.line(int(n.Raw.Offset)), p.Shape(n.Raw).Start.Line; got != want {
				t.Errorf("node %s %q at offset %d: line %d, want %d", n.Kind, n.Data, n.Raw.Offset, got, want)
			}
			checked++
		}
		for it := n.Children(); it.Next(); {
			walk(it.Node())
		}
	}
	for p.NextExpression() {
		walk(p.Expression())
	}
	if err := p.Error(); err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("checked only %d nodes", checked)
	}
	for off, want := range map[int]int{0: 1, len(data): 1 + strings.Count(doc, "\n")} {
		if got := lines.line(off); got != want {
			t.Errorf("offset %d: line %d, want %d", off, got, want)
		}
	}
}
