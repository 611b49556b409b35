package approvalplane_test

sf_path := "/services/data/v60.0/composite/sobjects"

sf_records(n) := [{"attributes": {"type": "Account"}, "id": sprintf("001%03d", [i]), "Rating": "Hot"} | some i in numbers.range(1, n)]

hs_inputs(n) := [{"id": sprintf("%d", [i]), "properties": {"lifecyclestage": "lead"}} | some i in numbers.range(1, n)]

# --- reads ------------------------------------------------------------------

test_records_get_is_allowed if {
	inp := req_q("postgrest", "GET", "/orders", {"select": "*"}, null)
	"records.read" in allow_ids(inp)
	decision(inp) == "allow"
}

test_records_write_is_not_a_read if {
	not "records.read" in allow_ids(req_q("postgrest", "DELETE", "/orders", {"id": "eq.1"}, null))
}

# --- Salesforce -------------------------------------------------------------

test_salesforce_bulk_update_needs_data_approval if {
	inp := req("salesforce", "PATCH", sf_path, {"allOrNone": false, "records": sf_records(25)})
	e := approval_of(inp, "records.salesforce.bulk_write")
	e.route == "data-oncall"
	e.risk == "high"
	e.action == "bulk_record_change"
	e.summary == {"system": "Salesforce", "operation": "patch", "records": "25", "object": "Account"}
	decision(inp) == "require_approval"
	well_formed(inp)
}

test_salesforce_small_update_is_allowed if {
	inp := req("salesforce", "PATCH", sf_path, {"records": sf_records(10)})
	not "records.salesforce.bulk_write" in approval_ids(inp)
	"records.salesforce.small_batch" in allow_ids(inp)
	decision(inp) == "allow"
}

test_salesforce_bulk_create_needs_approval if {
	"records.salesforce.bulk_write" in approval_ids(req("salesforce", "POST", sf_path, {"records": sf_records(11)}))
}

test_salesforce_bulk_delete_needs_approval if {
	ids := concat(",", [sprintf("001%03d", [i]) | some i in numbers.range(1, 12)])
	inp := req_q("salesforce", "DELETE", sf_path, {"ids": ids, "allOrNone": "true"}, null)
	e := approval_of(inp, "records.salesforce.bulk_delete")
	e.route == "data-oncall"
	e.summary.records == "12"
	e.summary.ids == "001001, 001002, 001003, 001004, 001005 (+7 more)"
	not "generic.delete" in approval_ids(inp)
	well_formed(inp)
}

test_salesforce_small_delete_is_allowed if {
	inp := req_q("salesforce", "DELETE", sf_path, {"ids": "001001,001002"}, null)
	not "records.salesforce.bulk_delete" in approval_ids(inp)
	not "generic.delete" in approval_ids(inp)
	"records.salesforce.small_batch" in allow_ids(inp)
}

test_salesforce_delete_ids_as_array_are_counted if {
	inp := req_q("salesforce", "DELETE", sf_path, {"ids": ["a1,a2,a3,a4,a5,a6", "a7,a8,a9,a10,a11"]}, null)
	"records.salesforce.bulk_delete" in approval_ids(inp)
}

test_salesforce_single_record_delete_falls_to_generic if {
	inp := req("salesforce", "DELETE", "/services/data/v60.0/sobjects/Account/001001", null)
	not "records.salesforce.bulk_delete" in approval_ids(inp)
	"generic.delete" in approval_ids(inp)
}

test_salesforce_threshold_comes_from_data if {
	inp := req("salesforce", "PATCH", sf_path, {"records": sf_records(3)})
	"records.salesforce.bulk_write" in approval_ids(inp) with data.records.salesforce.max_records as 2
}

test_salesforce_composite_with_many_writes_needs_approval if {
	subs := [{"method": "DELETE", "url": sprintf("/services/data/v60.0/sobjects/Account/001%03d", [i]), "referenceId": sprintf("r%d", [i])} | some i in numbers.range(1, 11)]
	inp := req("salesforce", "POST", "/services/data/v60.0/composite", {"compositeRequest": subs})
	e := approval_of(inp, "records.salesforce.bulk_write")
	e.summary.records == "11"
	well_formed(inp)
}

test_salesforce_composite_of_reads_is_allowed if {
	subs := [{"method": "GET", "url": "/services/data/v60.0/sobjects/Account/001", "referenceId": sprintf("r%d", [i])} | some i in numbers.range(1, 20)]
	inp := req("salesforce", "POST", "/services/data/v60.0/composite/batch", {"batchRequests": subs})
	not "records.salesforce.bulk_write" in approval_ids(inp)
	"records.salesforce.small_batch" in allow_ids(inp)
}

test_salesforce_bulk_delete_job_needs_approval if {
	inp := req("salesforce", "POST", "/services/data/v60.0/jobs/ingest", {"object": "Contact", "operation": "hardDelete"})
	e := approval_of(inp, "records.salesforce.bulk_job")
	e.risk == "critical"
	e.summary == {"system": "Salesforce", "operation": "hardDelete", "object": "Contact"}
	approval_of(req("salesforce", "POST", "/services/data/v60.0/jobs/ingest", {"object": "Contact", "operation": "update"}), "records.salesforce.bulk_job").risk == "high"
	well_formed(inp)
}

test_salesforce_insert_job_passes if {
	inp := req("salesforce", "POST", "/services/data/v60.0/jobs/ingest", {"object": "Contact", "operation": "insert"})
	not "records.salesforce.bulk_job" in approval_ids(inp)
}

# --- HubSpot ----------------------------------------------------------------

test_hubspot_bulk_update_needs_approval if {
	inp := req("hubspot", "POST", "/crm/v3/objects/contacts/batch/update", {"inputs": hs_inputs(50)})
	e := approval_of(inp, "records.hubspot.bulk_update")
	e.route == "data-oncall"
	e.risk == "medium"
	e.action == "bulk_record_change"
	e.summary == {"system": "HubSpot", "object": "contacts", "operation": "update", "records": "50"}
	well_formed(inp)
}

test_hubspot_bulk_archive_is_high_risk if {
	inp := req("hubspot", "POST", "/crm/v3/objects/deals/batch/archive", {"inputs": [{"id": sprintf("%d", [i])} | some i in numbers.range(1, 11)]})
	approval_of(inp, "records.hubspot.bulk_archive").risk == "high"
}

test_hubspot_small_batch_is_allowed if {
	inp := req("hubspot", "POST", "/crm/v3/objects/contacts/batch/update", {"inputs": hs_inputs(10)})
	count(approval_ids(inp)) == 0
	"records.hubspot.small_batch" in allow_ids(inp)
}

test_hubspot_batch_read_passes if {
	inp := req("hubspot", "POST", "/crm/v3/objects/contacts/batch/read", {"inputs": hs_inputs(50)})
	count(approval_ids(inp)) == 0
}

# --- PostgREST --------------------------------------------------------------

test_postgrest_unfiltered_delete_is_critical if {
	inp := req_q("postgrest", "DELETE", "/orders", {}, null)
	e := approval_of(inp, "records.postgrest.unfiltered")
	e.route == "data-oncall"
	e.risk == "critical"
	e.action == "bulk_record_change"
	e.summary == {"system": "PostgREST", "table": "orders", "operation": "delete", "filter": "none (every row)"}
	not "generic.delete" in approval_ids(inp)
	well_formed(inp)
}

test_postgrest_unfiltered_patch_with_only_shaping_params_is_critical if {
	inp := req_q("postgrest", "PATCH", "/orders", {"select": "id", "order": "id.asc", "limit": "10"}, {"status": "void"})
	"records.postgrest.unfiltered" in approval_ids(inp)
	emb := req_q("postgrest", "PATCH", "/orders", {"items.sku": "eq.5"}, {"status": "void"})
	"records.postgrest.unfiltered" in approval_ids(emb)
	none := req("postgrest", "PATCH", "/rest/v1/orders", {"status": "void"})
	"records.postgrest.unfiltered" in approval_ids(none)
}

test_postgrest_filtered_write_is_allowed if {
	inp := req_q("postgrest", "PATCH", "/orders", {"id": "eq.42", "select": "id"}, {"status": "shipped"})
	count(approval_ids(inp)) == 0
	"records.postgrest.filtered_write" in allow_ids(inp)
	del := req_q("postgrest", "DELETE", "/orders", {"or": "(id.eq.1,id.eq.2)"}, null)
	"records.postgrest.filtered_write" in allow_ids(del)
	not "generic.delete" in approval_ids(del)
	decision(del) == "allow"
}

test_postgrest_protected_table_asks_even_when_filtered if {
	inp := req_q("postgrest", "DELETE", "/payments", {"id": "eq.1"}, null)
	e := approval_of(inp, "records.postgrest.protected_table") with data.records.postgrest.protected_tables as ["payments"]
	e.risk == "high"
	not "records.postgrest.protected_table" in approval_ids(inp)
}

test_postgrest_filtered_writes_can_be_gated_by_data if {
	inp := req_q("postgrest", "PATCH", "/orders", {"id": "eq.42"}, {"status": "x"})
	"records.postgrest.filtered_write_gated" in approval_ids(inp) with data.records.postgrest.allow_filtered_writes as false
	not "records.postgrest.filtered_write" in allow_ids(inp) with data.records.postgrest.allow_filtered_writes as false
}

test_postgrest_broken_filtered_write_setting_asks if {
	inp := req_q("postgrest", "PATCH", "/orders", {"id": "eq.42"}, {"status": "x"})
	"records.postgrest.filtered_write_gated" in approval_ids(inp) with data.records.postgrest.allow_filtered_writes as "yes"
	"records.postgrest.filtered_write" in allow_ids(inp) with data.records.postgrest.allow_filtered_writes as true
}

test_postgrest_rpc_is_not_a_table_write if {
	inp := req_q("postgrest", "PATCH", "/rpc/recalc", {}, {})
	not "records.postgrest.unfiltered" in approval_ids(inp)
}

test_postgrest_insert_passes if {
	inp := req("postgrest", "POST", "/orders", [{"id": 1}])
	count(approval_ids(inp)) == 0
}
