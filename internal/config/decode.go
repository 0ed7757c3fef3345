package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// decoder copies a generic TOML tree (as go-toml decodes it into
// map[string]any) onto the config structs, field by field, by their `toml`
// tags. Unlike a library's strict mode it keeps going after a problem, so
// --validate can list every unknown key and every wrongly typed value at once,
// each with its key path.
type decoder struct {
	errs *Errors
}

var durationType = reflect.TypeOf(Duration(0))
var anyMapType = reflect.TypeOf(map[string]any(nil))

func (d *decoder) fail(path, format string, args ...any) {
	d.errs.add(path, fmt.Sprintf(format, args...))
}

// decode stores v (a TOML value) into dst (a settable reflect.Value).
func (d *decoder) decode(path string, v any, dst reflect.Value) {
	if dst.Type() == durationType {
		dur, err := parseDuration(v)
		if err != nil {
			d.fail(path, "%v", err)
			return
		}
		dst.SetInt(int64(dur))
		return
	}
	if dst.Type() == anyMapType {
		m, ok := v.(map[string]any)
		if !ok {
			d.fail(path, "want a table, got %s", tomlType(v))
			return
		}
		dst.Set(reflect.ValueOf(m))
		return
	}
	switch dst.Kind() {
	case reflect.Pointer:
		if dst.IsNil() {
			dst.Set(reflect.New(dst.Type().Elem()))
			// An optional section ([redis]) gets its defaults when it appears.
			d.setDefaults(dst.Elem())
		}
		d.decode(path, v, dst.Elem())
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.fail(path, "want a table, got %s", tomlType(v))
			return
		}
		d.decodeStruct(path, m, dst)
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			d.fail(path, "want a string, got %s", tomlType(v))
			return
		}
		dst.SetString(s)
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			d.fail(path, "want true or false, got %s", tomlType(v))
			return
		}
		dst.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		i, ok := v.(int64)
		if !ok {
			d.fail(path, "want an integer, got %s", tomlType(v))
			return
		}
		if dst.OverflowInt(i) {
			d.fail(path, "%d is out of range", i)
			return
		}
		dst.SetInt(i)
	case reflect.Float64:
		switch x := v.(type) {
		case float64:
			dst.SetFloat(x)
		case int64:
			dst.SetFloat(float64(x))
		default:
			d.fail(path, "want a number, got %s", tomlType(v))
		}
	case reflect.Slice:
		arr, ok := v.([]any)
		if !ok {
			d.fail(path, "want an array, got %s", tomlType(v))
			return
		}
		s := reflect.MakeSlice(dst.Type(), len(arr), len(arr))
		for i, el := range arr {
			elem := s.Index(i)
			d.setDefaults(elem)
			d.decode(path+"["+strconv.Itoa(i)+"]", el, elem)
		}
		dst.Set(s)
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			d.fail(path, "want a table, got %s", tomlType(v))
			return
		}
		out := reflect.MakeMapWithSize(dst.Type(), len(m))
		for _, k := range sortedKeysOf(m) {
			elem := reflect.New(dst.Type().Elem()).Elem()
			d.setDefaults(elem)
			d.decode(join(path, k), m[k], elem)
			out.SetMapIndex(reflect.ValueOf(k), elem)
		}
		dst.Set(out)
	default:
		panic(fmt.Sprintf("config: unsupported field kind %s at %s", dst.Kind(), path))
	}
}

// structKeys are a struct type's TOML keys: the field index of each, and
// the keys in field order (for messages).
type structKeys struct {
	known map[string]int
	names []string
}

var keysOfType sync.Map // reflect.Type -> *structKeys, computed once per type

func keysOf(t reflect.Type) *structKeys {
	if k, ok := keysOfType.Load(t); ok {
		return k.(*structKeys)
	}
	k := &structKeys{known: map[string]int{}}
	for i := 0; i < t.NumField(); i++ {
		name := fieldName(t.Field(i))
		if name == "" {
			continue
		}
		k.known[name] = i
		k.names = append(k.names, name)
	}
	keysOfType.Store(t, k)
	return k
}

func (d *decoder) decodeStruct(path string, m map[string]any, dst reflect.Value) {
	sk := keysOf(dst.Type())
	known, names := sk.known, sk.names
	for _, k := range sortedKeysOf(m) {
		i, ok := known[k]
		if !ok {
			msg := fmt.Sprintf("unknown key %q", k)
			if s := suggest(k, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else {
				msg += fmt.Sprintf(" (known keys: %s)", strings.Join(names, ", "))
			}
			d.errs.add(join(path, k), msg)
			continue
		}
		d.decode(join(path, k), m[k], dst.Field(i))
	}
}

// setDefaults calls Defaults() on v when its type (or a pointer to it) has one.
func (d *decoder) setDefaults(v reflect.Value) {
	if v.CanAddr() {
		if def, ok := v.Addr().Interface().(interface{ setDefaults() }); ok {
			def.setDefaults()
		}
	}
}

func fieldName(f reflect.StructField) string {
	tag := f.Tag.Get("toml")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	if tag == "" {
		return strings.ToLower(f.Name)
	}
	return strings.Split(tag, ",")[0]
}

func tomlType(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case int64:
		return fmt.Sprintf("integer %d", x)
	case float64:
		return fmt.Sprintf("float %v", x)
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case nil:
		return "nothing"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// suggest returns the known name closest to k when it is a likely typo.
func suggest(k string, names []string) string {
	best, bestD := "", math.MaxInt
	for _, n := range names {
		if dist := levenshtein(k, n); dist < bestD {
			best, bestD = n, dist
		}
	}
	if bestD <= 2 || (bestD <= 3 && len(k) > 8) {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
