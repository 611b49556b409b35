package approvalplane_test

gh(method, path, body) := req("github", method, path, body)

# --- reads ------------------------------------------------------------------

test_github_get_is_allowed if {
	inp := gh("GET", "/repos/acme/api/pulls", null)
	"github.read" in allow_ids(inp)
	decision(inp) == "allow"
}

test_github_write_is_not_a_read if {
	not "github.read" in allow_ids(gh("POST", "/repos/acme/api/issues", {"title": "x"}))
}

# --- merging ----------------------------------------------------------------

test_github_pr_merge_needs_eng_approval if {
	inp := gh("PUT", "/repos/acme/api/pulls/42/merge", {"merge_method": "squash"})
	e := approval_of(inp, "github.pull.merge")
	e.route == "eng-oncall"
	e.risk == "high"
	e.action == "merge_pull_request"
	e.summary == {"repository": "acme/api", "pull_request": "#42", "merge_method": "squash"}
	decision(inp) == "require_approval"
	well_formed(inp)
}

test_github_pr_merge_on_allowlisted_repo_is_allowed if {
	inp := gh("PUT", "/repos/acme/sandbox/pulls/1/merge", {})
	ids := approval_ids(inp) with data.github.merge_allowlist as ["acme/sandbox"]
	not "github.pull.merge" in ids
	"github.pull.merge_allowlisted" in allow_ids(inp) with data.github.merge_allowlist as ["acme/sandbox"]
	"github.pull.merge_allowlisted" in allow_ids(inp) with data.github.merge_allowlist as ["ACME/*"]
}

test_github_allowlist_does_not_leak_to_other_repos if {
	inp := gh("PUT", "/repos/acme/api/pulls/1/merge", {})
	"github.pull.merge" in approval_ids(inp) with data.github.merge_allowlist as ["acme/sandbox"]
}

test_github_enterprise_paths_are_understood if {
	"github.pull.merge" in approval_ids(gh("PUT", "/api/v3/repos/acme/api/pulls/7/merge", null))
}

test_github_merges_into_protected_branch_need_approval if {
	inp := gh("POST", "/repos/acme/api/merges", {"base": "main", "head": "feature/x"})
	e := approval_of(inp, "github.branch.merge_protected")
	e.route == "eng-oncall"
	e.action == "merge_pull_request"
	e.summary == {"repository": "acme/api", "base": "main", "head": "feature/x"}
	"github.branch.merge_protected" in approval_ids(gh("POST", "/repos/acme/api/merges", {"base": "release/2.1", "head": "hotfix"}))
	well_formed(inp)
}

test_github_merges_into_other_branches_pass if {
	inp := gh("POST", "/repos/acme/api/merges", {"base": "feature/y", "head": "feature/x"})
	not "github.branch.merge_protected" in approval_ids(inp)
	not "github.branch.merge_protected" in approval_ids(gh("POST", "/repos/acme/api/merges", {"base": 5}))
}

test_github_protected_branches_come_from_data if {
	inp := gh("POST", "/repos/acme/api/merges", {"base": "trunk", "head": "x"})
	"github.branch.merge_protected" in approval_ids(inp) with data.github.protected_branches as ["trunk"]
}

# --- repositories and branches ----------------------------------------------

test_github_repo_delete_is_critical if {
	inp := gh("DELETE", "/repos/acme/api", null)
	e := approval_of(inp, "github.repo.delete")
	e.risk == "critical"
	e.action == "delete_repository"
	e.summary == {"repository": "acme/api"}
	not "generic.delete" in approval_ids(inp)
	well_formed(inp)
}

test_github_repo_subresource_delete_is_not_a_repo_delete if {
	inp := gh("DELETE", "/repos/acme/api/issues/comments/5", null)
	not "github.repo.delete" in approval_ids(inp)
	"generic.delete" in approval_ids(inp)
}

test_github_branch_delete_needs_approval if {
	inp := gh("DELETE", "/repos/acme/api/git/refs/heads/feature/login", null)
	e := approval_of(inp, "github.branch.delete")
	e.risk == "medium"
	e.action == "delete_branch"
	e.summary == {"repository": "acme/api", "branch": "feature/login"}
	not "generic.delete" in approval_ids(inp)
	approval_of(gh("DELETE", "/repos/acme/api/git/refs/heads/main", null), "github.branch.delete").risk == "high"
	well_formed(inp)
}

test_github_tag_delete_is_not_a_branch_delete if {
	not "github.branch.delete" in approval_ids(gh("DELETE", "/repos/acme/api/git/refs/tags/v1", null))
}

test_github_force_push_needs_approval if {
	inp := gh("PATCH", "/repos/acme/api/git/refs/heads/feature/x", {"sha": "abc123", "force": true})
	e := approval_of(inp, "github.branch.force_push")
	e.risk == "high"
	e.action == "force_push"
	e.summary == {"repository": "acme/api", "branch": "feature/x", "force": "true", "sha": "abc123"}
	approval_of(gh("PATCH", "/repos/acme/api/git/refs/heads/main", {"sha": "abc", "force": true}), "github.branch.force_push").risk == "critical"
	well_formed(inp)
}

test_github_fast_forward_of_feature_branch_passes if {
	inp := gh("PATCH", "/repos/acme/api/git/refs/heads/feature/x", {"sha": "abc123", "force": false})
	count(approval_ids(inp)) == 0
}

test_github_fast_forward_of_protected_branch_needs_approval if {
	inp := gh("PATCH", "/repos/acme/api/git/refs/heads/main", {"sha": "abc123"})
	"github.branch.update_protected" in approval_ids(inp)
	not "github.branch.force_push" in approval_ids(inp)
}

# --- releases and deploys ---------------------------------------------------

test_github_release_needs_approval if {
	inp := gh("POST", "/repos/acme/api/releases", {"tag_name": "v2.0.0", "name": "2.0", "draft": false})
	e := approval_of(inp, "github.release.create")
	e.risk == "medium"
	e.action == "create_release"
	e.summary == {"repository": "acme/api", "tag_name": "v2.0.0", "name": "2.0", "draft": "false"}
	well_formed(inp)
}

test_github_release_edit_is_not_a_new_release if {
	not "github.release.create" in approval_ids(gh("PATCH", "/repos/acme/api/releases/1", {"body": "notes"}))
}

test_github_production_deployment_needs_approval if {
	inp := gh("POST", "/repos/acme/api/deployments", {"ref": "main", "environment": "Production"})
	e := approval_of(inp, "github.deployment.production")
	e.risk == "high"
	e.action == "deploy"
	e.summary == {"repository": "acme/api", "environment": "Production", "ref": "main"}
	well_formed(inp)
}

test_github_deployment_without_environment_is_production if {
	"github.deployment.production" in approval_ids(gh("POST", "/repos/acme/api/deployments", {"ref": "main"}))
}

test_github_staging_deployment_passes if {
	not "github.deployment.production" in approval_ids(gh("POST", "/repos/acme/api/deployments", {"ref": "main", "environment": "staging"}))
}

test_github_deploy_workflow_dispatch_needs_approval if {
	inp := gh("POST", "/repos/acme/api/actions/workflows/deploy-prod.yml/dispatches", {"ref": "main"})
	e := approval_of(inp, "github.workflow.deploy_dispatch")
	e.action == "run_deploy_workflow"
	e.summary == {"repository": "acme/api", "workflow": "deploy-prod.yml", "ref": "main"}
	"github.workflow.deploy_dispatch" in approval_ids(gh("POST", "/repos/acme/api/actions/workflows/prod-deploy.yml/dispatches", {"ref": "main"}))
	well_formed(inp)
}

test_github_other_workflow_dispatch_passes if {
	inp := gh("POST", "/repos/acme/api/actions/workflows/ci.yml/dispatches", {"ref": "main"})
	not "github.workflow.deploy_dispatch" in approval_ids(inp)
	"github.workflow.deploy_dispatch" in approval_ids(inp) with data.github.deploy_workflow_patterns as ["ci*"]
}

# --- access -----------------------------------------------------------------

test_github_collaborator_changes_need_approval if {
	inp := gh("PUT", "/repos/acme/api/collaborators/mallory", {"permission": "admin"})
	e := approval_of(inp, "github.collaborator.change")
	e.risk == "high"
	e.action == "change_collaborator"
	e.summary == {"repository": "acme/api", "user": "mallory", "change": "add or update", "permission": "admin"}
	del := gh("DELETE", "/repos/acme/api/collaborators/alice", null)
	approval_of(del, "github.collaborator.change").summary.change == "remove"
	not "generic.delete" in approval_ids(del)
	well_formed(inp)
}

test_github_collaborator_listing_passes if {
	inp := gh("GET", "/repos/acme/api/collaborators/alice/permission", null)
	not "github.collaborator.change" in approval_ids(inp)
	decision(inp) == "allow"
}

test_github_secret_changes_need_approval if {
	inp := gh("PUT", "/repos/acme/api/actions/secrets/AWS_KEY", {"encrypted_value": "xx", "key_id": "1"})
	e := approval_of(inp, "github.secret.change")
	e.action == "change_secret"
	e.summary == {"scope": "acme/api", "secret": "AWS_KEY", "change": "add or update"}
	org := gh("DELETE", "/orgs/acme/actions/secrets/NPM_TOKEN", null)
	approval_of(org, "github.secret.change").summary == {"scope": "organization acme", "secret": "NPM_TOKEN", "change": "remove"}
	not "generic.delete" in approval_ids(org)
	env := gh("PUT", "/repos/acme/api/environments/production/secrets/DB_URL", {})
	approval_of(env, "github.secret.change").summary.scope == "acme/api (environment production)"
	well_formed(inp)
}

test_github_secret_reads_pass if {
	not "github.secret.change" in approval_ids(gh("GET", "/repos/acme/api/actions/secrets/public-key", null))
	not "github.secret.change" in approval_ids(gh("PUT", "/repos/acme/api/actions/variables/REGION", {"value": "eu"}))
}
