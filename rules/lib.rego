# Shared helpers for the ApprovalPlane rules library.
#
# Every provider file builds on these. They only ever read `input` and
# `data`, guard every type before calling a builtin, and stay undefined
# (never raise an error) for inputs that are not proxied HTTP calls: no
# provider rule matches a `kind: "api"` or `kind: "mcp"` input (asked.rego
# handles `kind: "api"`, the request_approval calls).
#
# No regular expressions on the request path: string builtins (trim,
# split, strings.replace_n) do the same work for less. regorus keeps the
# patterns it compiled (regex and glob) in a bounded cache, so a glob over
# a fixed list from the data file costs its match, not its compilation.
package approvalplane

# Every builtin argument below is type-guarded and every value that may be
# missing is bound with `=`, so the bytecode VM may decide (docs/policy.md):
# approvalplane: vm-safe

# --- the three decision sets ------------------------------------------------

# Declared here so that each set exists even when no remaining rule file adds
# to it: regorus answers "not a valid rule path" for a set with no rule.
deny contains element if {
	some element in []
}

approval contains element if {
	some element in []
}

allow contains element if {
	some element in []
}

# --- the request ------------------------------------------------------------

# True for proxied HTTP calls; provider rules fire only for these.
http_request if {
	input.kind == "http"
	is_object(input.request)
}

# Upper-cased method, e.g. "DELETE".
http_method := upper(input.request.method) if {
	http_request
	is_string(input.request.method)
}

http_read if http_method in {"GET", "HEAD"}

# The path as the upstream will see it, percent-decoded so that encoded
# separators or letters cannot slip past the path patterns below. A literal
# "+" is kept as "+" (form decoding would turn it into a space).
http_path := urlquery.decode(replace(input.request.path, "+", "%2B")) if {
	http_request
	is_string(input.request.path)
}

# Path segments, empty ones (from "//" or a trailing "/") dropped.
http_segments := [s | some s in split(http_path, "/"); s != ""]

# The same segments lower-cased, for matching fixed path words.
http_lsegments := split(lower(concat("/", http_segments)), "/") if {
	count(http_segments) > 0
} else := []

# The parsed body when it is a JSON object or a form; undefined otherwise.
http_body := input.request.parsed_body if {
	http_request
	is_object(input.request.parsed_body)
}

# The parsed body when it is an object, else {} (for building summaries).
http_object := v if {
	v = http_body
} else := {}

# The parsed body whatever its shape (arrays for batch APIs).
http_parsed := input.request.parsed_body if http_request

# Query parameters as an object ({} when absent).
http_query := input.request.query if {
	http_request
	is_object(input.request.query)
} else := {}

# --- providers ---------------------------------------------------------------

# Upstream names that speak provider `p`'s API: data.providers[p], or just
# [p] when the data file does not say.
provider_upstreams(p) := data.providers[p] if is_array(data.providers[p])

provider_upstreams(p) := [p] if not is_array(data.providers[p])

# The providers whose API the request's upstream speaks: every p whose
# data.providers[p] lists the upstream, and the upstream's own name when
# data.providers says nothing of it. A complete rule, so it is computed once
# per decision; each provider file tests membership instead of calling a
# function per provider (function results are not cached).
http_providers contains p if {
	http_request
	is_string(input.upstream)
	is_object(data.providers)
	some p
	input.upstream in data.providers[p]
	is_array(data.providers[p])
}

http_providers contains input.upstream if {
	http_request
	is_string(input.upstream)
	not is_array(data.providers[input.upstream])
}

# True when this is a proxied HTTP call to an upstream of provider `p`
# (the same as `input.upstream in provider_upstreams(p)`, without building
# the list).
upstream_is(p) if p in http_providers

# --- values ------------------------------------------------------------------

# A body or query value as a non-negative whole number, or undefined.
# Accepts numbers and digit-only strings (form bodies carry strings).
whole_number(v) := v if {
	is_number(v)
	v >= 0
	v == floor(v)
} else := to_number(trim_left(v, "0")) if {
	# Leading zeros are dropped first: to_number("0007") is an error (it
	# reads JSON numbers).
	is_string(v)
	count(v) <= 15
	trim_left(v, "0123456789") == ""
	trim_left(v, "0") != ""
} else := 0 if {
	is_string(v)
	v != ""
	count(v) <= 15
	trim_left(v, "0") == ""
}

# True when `v` is defined, whatever its value (false and null included).
present(_) := true

# True when `v` is present but is not a whole number as above.
not_whole_number(v) if {
	not is_null(v)
	not whole_number(v)
}

# "2400000" -> "2,400,000"
thousands(digits) := digits if count(digits) <= 3

thousands(digits) := concat(",", array.concat([substring(digits, 0, head)], tail)) if {
	n := count(digits)
	n > 3
	head := ((n - 1) % 3) + 1
	tail := [substring(digits, i, 3) | some i in numbers.range(head, n - 1); (i - head) % 3 == 0]
}

# Currencies whose Stripe amounts are already in whole units.
zero_decimal_currencies := {
	"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
	"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
}

# Formats an amount in minor units: money(240000, "") -> "$2,400.00",
# money(240000, "usd") -> "$2,400.00 USD", money(240000, "eur") ->
# "2,400.00 EUR", money(5000, "jpy") -> "5,000 JPY".
money(minor, currency) := sprintf("$%s", [major_units(minor)]) if {
	not is_string(currency)
}

money(minor, currency) := sprintf("$%s", [major_units(minor)]) if {
	currency == ""
}

money(minor, currency) := sprintf("$%s USD", [major_units(minor)]) if {
	is_string(currency)
	lower(currency) == "usd"
}

money(minor, currency) := sprintf("%s %s", [major_units(minor), upper(currency)]) if {
	is_string(currency)
	not lower(currency) in {"", "usd"}
	not lower(currency) in zero_decimal_currencies
}

money(minor, currency) := sprintf("%s %s", [thousands(format_int(minor, 10)), upper(currency)]) if {
	is_string(currency)
	lower(currency) in zero_decimal_currencies
}

major_units(minor) := sprintf("%s.%02d", [thousands(format_int((minor - (minor % 100)) / 100, 10)), minor % 100])

# Keeps the entries of `obj` named in `keys` whose values are strings.
string_fields(obj, keys) := {k: obj[k] | some k in keys; is_string(obj[k])} if is_object(obj)

string_fields(obj, keys) := {} if not is_object(obj)

# Glob match that tolerates bad patterns in data: non-strings never match.
glob_any(patterns, value) if {
	is_string(value)
	some p in patterns
	is_string(p)
	glob.match(lower(p), ["/"], lower(value))
}
