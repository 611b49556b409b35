# Bulk changes to business records: Salesforce, HubSpot, PostgREST.
#
# Upstreams: data.providers.salesforce / hubspot / postgrest (defaults: the
# provider names). A batch of at most max_records records is allowed; a
# larger one asks data-oncall. A PostgREST PATCH or DELETE without a row
# filter touches every row of the table and asks at critical risk.
# Data (data.records):
#   salesforce.max_records       (default 10)
#   hubspot.max_records          (default 10)
#   postgrest.allow_filtered_writes  filtered PATCH/DELETE allowed (default true)
#   postgrest.protected_tables   tables whose every PATCH/DELETE asks (default [])
#   postgrest.non_filter_params  query parameters that do not select rows
package approvalplane

# Every builtin argument below is type-guarded and every value that may be
# missing is bound with `=`, so the bytecode VM may decide (docs/policy.md):
# approvalplane: vm-safe

# --- dispatch ---------------------------------------------------------------

# The rules below add to records_*; they reach the decision sets only for
# requests that pass records_request, so other requests never evaluate them.
# Reads are allowed: records_approval is not evaluated for them.

approval contains element if {
	records_request
	not http_read
	some element in records_approval
}

allow contains element if {
	records_request
	some element in records_allow
}

records_salesforce_max := v if {
	v = whole_number(data.records.salesforce.max_records)
} else := 0 if {
	not_whole_number(data.records.salesforce.max_records)
} else := 10

records_hubspot_max := v if {
	v = whole_number(data.records.hubspot.max_records)
} else := 0 if {
	not_whole_number(data.records.hubspot.max_records)
} else := 10

records_request if count(http_providers & {"salesforce", "hubspot", "postgrest"}) > 0

records_allow contains {
	"id": "records.read",
	"reason": "read-only request to a records API",
} if {
	records_request
	http_read
}

# --- Salesforce -------------------------------------------------------------

# /services/data/vXX.X/...: the segments after the version, lower-cased.
salesforce_rest := array.slice(http_lsegments, 3, count(http_lsegments)) if {
	"salesforce" in http_providers
	count(http_lsegments) >= 4
	http_lsegments[0] == "services"
	http_lsegments[1] == "data"
}

# POST (create) / PATCH (update, upsert) .../composite/sobjects[/...]
salesforce_batch_write if {
	http_method in {"POST", "PATCH"}
	count(salesforce_rest) >= 2
	array.slice(salesforce_rest, 0, 2) == ["composite", "sobjects"]
	is_array(http_body.records)
}

salesforce_write_count := count(http_body.records) if salesforce_batch_write

# DELETE .../composite/sobjects?ids=a,b,c
salesforce_batch_delete if {
	http_method == "DELETE"
	salesforce_rest == ["composite", "sobjects"]
}

salesforce_query_ids(v) := [id | some part in split(v, ","); id := trim_space(part); id != ""] if is_string(v)

salesforce_query_ids(v) := [id |
	some item in v
	is_string(item)
	some part in split(item, ",")
	id := trim_space(part)
	id != ""
] if is_array(v)

salesforce_delete_ids := salesforce_query_ids(http_query.ids) if salesforce_batch_delete

salesforce_delete_count := v if {
	v = count(salesforce_delete_ids)
} else := 0

# POST .../composite {"compositeRequest": [...]} and .../composite/batch
# {"batchRequests": [...]}: every subrequest that is not a read counts.
salesforce_subrequests := http_body.compositeRequest if {
	http_method == "POST"
	salesforce_rest == ["composite"]
	is_array(http_body.compositeRequest)
}

salesforce_subrequests := http_body.batchRequests if {
	http_method == "POST"
	salesforce_rest == ["composite", "batch"]
	is_array(http_body.batchRequests)
}

salesforce_subrequest_writes := [r |
	some r in salesforce_subrequests
	is_object(r)
	is_string(r.method)
	not upper(r.method) in {"GET", "HEAD"}
]

salesforce_object_types := concat(", ", sort({t |
	some r in http_body.records
	is_object(r)
	t = r.attributes.type
	is_string(t)
})) if salesforce_batch_write

salesforce_summary_extra := {"object": salesforce_object_types} if {
	salesforce_object_types != ""
} else := {}

records_approval contains {
	"id": "records.salesforce.bulk_write",
	"reason": sprintf("writes %d Salesforce records in one request, over your limit of %d", [salesforce_write_count, records_salesforce_max]),
	"route": "data-oncall",
	"risk": "high",
	"action": "bulk_record_change",
	"summary": object.union(
		{"system": "Salesforce", "operation": lower(http_method), "records": format_int(salesforce_write_count, 10)},
		salesforce_summary_extra,
	),
	"escalate_after": "30m",
} if {
	salesforce_batch_write
	salesforce_write_count > records_salesforce_max
}

records_approval contains {
	"id": "records.salesforce.bulk_delete",
	"reason": sprintf("deletes %d Salesforce records in one request, over your limit of %d", [salesforce_delete_count, records_salesforce_max]),
	"route": "data-oncall",
	"risk": "high",
	"action": "bulk_record_change",
	"summary": {
		"system": "Salesforce",
		"operation": "delete",
		"records": format_int(salesforce_delete_count, 10),
		"ids": salesforce_ids_sample,
	},
	"escalate_after": "30m",
} if {
	salesforce_batch_delete
	salesforce_delete_count > records_salesforce_max
}

salesforce_ids_sample := concat(", ", array.slice(salesforce_delete_ids, 0, 5)) if count(salesforce_delete_ids) <= 5

salesforce_ids_sample := sprintf("%s (+%d more)", [concat(", ", array.slice(salesforce_delete_ids, 0, 5)), count(salesforce_delete_ids) - 5]) if count(salesforce_delete_ids) > 5

records_approval contains {
	"id": "records.salesforce.bulk_write",
	"reason": sprintf("a composite request with %d writing subrequests, over your limit of %d", [count(salesforce_subrequest_writes), records_salesforce_max]),
	"route": "data-oncall",
	"risk": "high",
	"action": "bulk_record_change",
	"summary": {
		"system": "Salesforce",
		"operation": "composite",
		"records": format_int(count(salesforce_subrequest_writes), 10),
	},
	"escalate_after": "30m",
} if {
	count(salesforce_subrequest_writes) > records_salesforce_max
}

# Bulk API 2.0 ingest jobs change records in bulk by definition.
salesforce_job_operation := http_body.operation if {
	http_method == "POST"
	salesforce_rest == ["jobs", "ingest"]
	is_string(http_body.operation)
	lower(http_body.operation) in {"update", "upsert", "delete", "harddelete"}
}

salesforce_job_risk := "critical" if {
	lower(salesforce_job_operation) == "harddelete"
} else := "high"

records_approval contains {
	"id": "records.salesforce.bulk_job",
	"reason": sprintf("starts a Bulk API %s job, which changes records in bulk", [salesforce_job_operation]),
	"route": "data-oncall",
	"risk": salesforce_job_risk,
	"action": "bulk_record_change",
	"summary": object.union(
		string_fields(http_object, ["object", "externalIdFieldName"]),
		{"system": "Salesforce", "operation": salesforce_job_operation},
	),
	"escalate_after": "30m",
} if salesforce_job_operation

records_allow contains {
	"id": "records.salesforce.small_batch",
	"reason": sprintf("a batch of %d records, within your limit of %d", [salesforce_small_count, records_salesforce_max]),
} if {
	salesforce_small_count <= records_salesforce_max
}

salesforce_small_count := salesforce_write_count

salesforce_small_count := salesforce_delete_count if salesforce_batch_delete

salesforce_small_count := count(salesforce_subrequest_writes) if salesforce_subrequests

# --- HubSpot ----------------------------------------------------------------

# POST /crm/v3/objects/{type}/batch/{update|upsert|archive}
hubspot_batch_op := http_lsegments[5] if {
	"hubspot" in http_providers
	http_method == "POST"
	count(http_lsegments) == 6
	http_lsegments[0] == "crm"
	http_lsegments[2] == "objects"
	http_lsegments[4] == "batch"
	http_lsegments[5] in {"update", "upsert", "archive"}
	is_array(http_body.inputs)
}

hubspot_batch_count := count(http_body.inputs) if hubspot_batch_op

hubspot_batch_risk := "high" if {
	hubspot_batch_op == "archive"
} else := "medium"

records_approval contains {
	"id": sprintf("records.hubspot.bulk_%s", [hubspot_batch_op]),
	"reason": sprintf("%s of %d HubSpot %s in one request, over your limit of %d", [hubspot_batch_op, hubspot_batch_count, http_segments[3], records_hubspot_max]),
	"route": "data-oncall",
	"risk": hubspot_batch_risk,
	"action": "bulk_record_change",
	"summary": {
		"system": "HubSpot",
		"object": http_segments[3],
		"operation": hubspot_batch_op,
		"records": format_int(hubspot_batch_count, 10),
	},
	"escalate_after": "30m",
} if {
	hubspot_batch_count > records_hubspot_max
}

records_allow contains {
	"id": "records.hubspot.small_batch",
	"reason": sprintf("a batch of %d records, within your limit of %d", [hubspot_batch_count, records_hubspot_max]),
} if {
	hubspot_batch_count <= records_hubspot_max
}

# --- PostgREST --------------------------------------------------------------

# Missing: true. Present but not a boolean: false (a broken setting asks).
postgrest_allow_filtered := data.records.postgrest.allow_filtered_writes if {
	is_boolean(data.records.postgrest.allow_filtered_writes)
} else := false if {
	present(data.records.postgrest.allow_filtered_writes)
} else := true

postgrest_protected_tables := data.records.postgrest.protected_tables if {
	is_array(data.records.postgrest.protected_tables)
} else := []

# Query parameters that shape the request but select no rows.
postgrest_non_filter_params := data.records.postgrest.non_filter_params if {
	is_array(data.records.postgrest.non_filter_params)
} else := ["select", "order", "limit", "offset", "columns", "on_conflict"]

# PATCH or DELETE on /{table}, or /rest/v1/{table} (Supabase).
postgrest_table := http_segments[0] if {
	postgrest_write
	count(http_segments) == 1
}

postgrest_table := http_segments[2] if {
	postgrest_write
	count(http_lsegments) == 3
	http_lsegments[0] == "rest"
	http_lsegments[1] == "v1"
}

postgrest_write if {
	"postgrest" in http_providers
	http_method in {"PATCH", "DELETE"}
	not http_lsegments[0] == "rpc"
}

# Row filters: column=op.value, and the logical and/or/not.and/not.or.
# Keys with a dot filter embedded resources, not the rows being changed.
postgrest_filter contains k if {
	some k, _ in http_query
	not k in postgrest_non_filter_params
	postgrest_row_filter_key(k)
}

postgrest_row_filter_key(k) if not contains(k, ".")

postgrest_row_filter_key(k) if lower(k) in {"not.and", "not.or"}

postgrest_filters := sort([k | some k in postgrest_filter])

postgrest_summary := {
	"system": "PostgREST",
	"table": postgrest_table,
	"operation": lower(http_method),
	"filter": postgrest_filter_text,
}

postgrest_filter_text := concat(", ", postgrest_filters) if {
	count(postgrest_filters) > 0
} else := "none (every row)"

records_approval contains {
	"id": "records.postgrest.unfiltered",
	"reason": sprintf("%s on %s without a row filter changes every row of the table", [http_method, postgrest_table]),
	"route": "data-oncall",
	"risk": "critical",
	"action": "bulk_record_change",
	"summary": postgrest_summary,
	"escalate_after": "15m",
} if {
	postgrest_table
	count(postgrest_filters) == 0
}

postgrest_protected if {
	some t in postgrest_protected_tables
	is_string(t)
	lower(t) == lower(postgrest_table)
}

records_approval contains {
	"id": "records.postgrest.protected_table",
	"reason": sprintf("%s is a protected table: every change to it asks", [postgrest_table]),
	"route": "data-oncall",
	"risk": "high",
	"action": "bulk_record_change",
	"summary": postgrest_summary,
	"escalate_after": "30m",
} if {
	postgrest_table
	count(postgrest_filters) > 0
	postgrest_protected
}

records_approval contains {
	"id": "records.postgrest.filtered_write_gated",
	"reason": sprintf("filtered writes need approval here (data.records.postgrest.allow_filtered_writes is false): %s on %s", [http_method, postgrest_table]),
	"route": "data-oncall",
	"risk": "medium",
	"action": "bulk_record_change",
	"summary": postgrest_summary,
	"escalate_after": "30m",
} if {
	postgrest_table
	count(postgrest_filters) > 0
	not postgrest_protected
	postgrest_allow_filtered == false
}

records_allow contains {
	"id": "records.postgrest.filtered_write",
	"reason": sprintf("%s on %s is limited by a row filter (%s)", [http_method, postgrest_table, postgrest_filter_text]),
} if {
	postgrest_table
	count(postgrest_filters) > 0
	not postgrest_protected
	postgrest_allow_filtered == true
}

# --- DELETEs handled here (generic.delete stays out of them) ----------------

delete_covered contains "records.salesforce" if salesforce_batch_delete

delete_covered contains "records.postgrest" if {
	postgrest_table
	http_method == "DELETE"
}
