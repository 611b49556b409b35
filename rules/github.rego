# GitHub REST API: merges, destructive repository changes, deploys, access.
#
# Upstreams: data.providers.github (default ["github"]). A GitHub Enterprise
# Server upstream whose paths start with /api/v3 is understood too.
# Data (data.github):
#   merge_allowlist          repos ("owner/repo", globs allowed) whose pull
#                            requests may be merged without asking
#   protected_branches       branch names or globs ("release/*")
#   production_environments  deployment environments that count as production
#   deploy_workflow_patterns workflow file globs ("deploy*") whose manual
#                            dispatch is a deploy
package approvalplane

# Every builtin argument below is type-guarded and every value that may be
# missing is bound with `=`, so the bytecode VM may decide (docs/policy.md):
# approvalplane: vm-safe

# --- dispatch ---------------------------------------------------------------

# The rules below add to github_*; they reach the decision sets only for
# requests that pass github_request, so other requests never evaluate them.
# Reads are allowed: github_approval is not evaluated for them.

approval contains element if {
	github_request
	not http_read
	some element in github_approval
}

allow contains element if {
	github_request
	some element in github_allow
}

github_merge_allowlist := data.github.merge_allowlist if {
	is_array(data.github.merge_allowlist)
} else := []

github_protected_branches := data.github.protected_branches if {
	is_array(data.github.protected_branches)
} else := ["main", "master", "production", "release", "release/*"]

github_production_environments := data.github.production_environments if {
	is_array(data.github.production_environments)
} else := ["production", "prod", "live"]

github_deploy_workflow_patterns := data.github.deploy_workflow_patterns if {
	is_array(data.github.deploy_workflow_patterns)
} else := ["deploy*", "*deploy.yml", "*deploy.yaml", "release*", "publish*"]

github_request if "github" in http_providers

github_allow contains {
	"id": "github.read",
	"reason": "read-only GitHub request",
} if {
	github_request
	http_read
}

# --- path shape -------------------------------------------------------------

github_offset := 2 if {
	count(http_lsegments) >= 2
	http_lsegments[0] == "api"
	http_lsegments[1] == "v3"
} else := 0

# Segments after an optional /api/v3 prefix: as sent, and lower-cased.
github_segs := array.slice(http_segments, github_offset, count(http_segments)) if github_request

github_lsegs := array.slice(http_lsegments, github_offset, count(http_lsegments)) if github_request

# /repos/{owner}/{repo}/...
github_repo := sprintf("%s/%s", [github_segs[1], github_segs[2]]) if {
	count(github_lsegs) >= 3
	github_lsegs[0] == "repos"
}

# Lower-cased segments after /repos/{owner}/{repo}.
github_rest := array.slice(github_lsegs, 3, count(github_lsegs)) if github_repo

# The branch in .../git/refs/heads/{branch}, slashes and all.
github_ref_branch := concat("/", array.slice(github_segs, 6, count(github_segs))) if {
	count(github_rest) >= 4
	array.slice(github_rest, 0, 3) == ["git", "refs", "heads"]
}

github_protected(branch) if glob_any(github_protected_branches, branch)

github_allowlisted(repo) if glob_any(github_merge_allowlist, repo)

# JSON booleans and numbers as summary text.
github_text(v) := v if {
	is_string(v)
} else := sprintf("%v", [v]) if {
	not is_null(v)
	not is_object(v)
	not is_array(v)
}

github_fields(keys) := {k: t | some k in keys; t = github_text(http_object[k])}

# --- merging ----------------------------------------------------------------

# PUT /repos/{o}/{r}/pulls/{n}/merge. The base branch is not in the request,
# so every merge asks unless the repository is allowlisted.
github_pull_merge if {
	github_request
	http_method == "PUT"
	count(github_rest) == 3
	github_rest[0] == "pulls"
	github_rest[2] == "merge"
}

github_approval contains {
	"id": "github.pull.merge",
	"reason": sprintf("merges pull request #%s into %s, possibly into a protected branch", [github_segs[4], github_repo]),
	"route": "eng-oncall",
	"risk": "high",
	"action": "merge_pull_request",
	"summary": object.union(
		github_fields(["merge_method", "commit_title", "sha"]),
		{"repository": github_repo, "pull_request": sprintf("#%s", [github_segs[4]])},
	),
	"escalate_after": "30m",
} if {
	github_pull_merge
	not github_allowlisted(github_repo)
}

github_allow contains {
	"id": "github.pull.merge_allowlisted",
	"reason": sprintf("%s is on the merge allowlist", [github_repo]),
} if {
	github_pull_merge
	github_allowlisted(github_repo)
}

# POST /repos/{o}/{r}/merges {"base": "main", "head": "..."}
github_merge_head := http_body.head if {
	is_string(http_body.head)
} else := "a branch"

github_approval contains {
	"id": "github.branch.merge_protected",
	"reason": sprintf("merges %s into the protected branch %s of %s", [github_merge_head, http_body.base, github_repo]),
	"route": "eng-oncall",
	"risk": "high",
	"action": "merge_pull_request",
	"summary": object.union(
		github_fields(["head", "commit_message"]),
		{"repository": github_repo, "base": http_body.base},
	),
	"escalate_after": "30m",
} if {
	github_request
	http_method == "POST"
	github_rest == ["merges"]
	is_string(http_body.base)
	github_protected(http_body.base)
}

# --- repositories and branches ----------------------------------------------

github_repo_delete if {
	github_request
	http_method == "DELETE"
	count(github_lsegs) == 3
	github_lsegs[0] == "repos"
}

github_approval contains {
	"id": "github.repo.delete",
	"reason": sprintf("deletes the repository %s with its issues, pull requests and wiki", [github_repo]),
	"route": "eng-oncall",
	"risk": "critical",
	"action": "delete_repository",
	"summary": {"repository": github_repo},
	"escalate_after": "15m",
} if github_repo_delete

github_branch_delete if {
	github_request
	http_method == "DELETE"
	github_ref_branch
}

github_branch_risk := "high" if {
	github_protected(github_ref_branch)
} else := "medium"

github_approval contains {
	"id": "github.branch.delete",
	"reason": sprintf("deletes the branch %s of %s", [github_ref_branch, github_repo]),
	"route": "eng-oncall",
	"risk": github_branch_risk,
	"action": "delete_branch",
	"summary": {"repository": github_repo, "branch": github_ref_branch},
	"escalate_after": "30m",
} if github_branch_delete

# PATCH /repos/{o}/{r}/git/refs/heads/{b} {"sha": "...", "force": true}
github_ref_update if {
	github_request
	http_method == "PATCH"
	github_ref_branch
}

github_force if http_body.force in {true, "true"}

github_force_risk := "critical" if {
	github_protected(github_ref_branch)
} else := "high"

github_approval contains {
	"id": "github.branch.force_push",
	"reason": sprintf("force-updates %s of %s, which can discard commits", [github_ref_branch, github_repo]),
	"route": "eng-oncall",
	"risk": github_force_risk,
	"action": "force_push",
	"summary": object.union(
		github_fields(["sha"]),
		{"repository": github_repo, "branch": github_ref_branch, "force": "true"},
	),
	"escalate_after": "30m",
} if {
	github_ref_update
	github_force
}

# A plain (fast-forward) ref update on a protected branch is a push to it.
github_approval contains {
	"id": "github.branch.update_protected",
	"reason": sprintf("moves the protected branch %s of %s", [github_ref_branch, github_repo]),
	"route": "eng-oncall",
	"risk": "high",
	"action": "update_protected_branch",
	"summary": object.union(
		github_fields(["sha"]),
		{"repository": github_repo, "branch": github_ref_branch},
	),
	"escalate_after": "30m",
} if {
	github_ref_update
	not github_force
	github_protected(github_ref_branch)
}

# --- releases and deploys ---------------------------------------------------

github_approval contains {
	"id": "github.release.create",
	"reason": sprintf("publishes a release of %s", [github_repo]),
	"route": "eng-oncall",
	"risk": "medium",
	"action": "create_release",
	"summary": object.union(
		github_fields(["tag_name", "name", "target_commitish", "draft", "prerelease"]),
		{"repository": github_repo},
	),
	"escalate_after": "30m",
} if {
	github_request
	http_method == "POST"
	github_rest == ["releases"]
}

# GitHub deploys to "production" when no environment is given.
github_deploy_environment := http_body.environment if {
	is_string(http_body.environment)
} else := "production"

github_production_deploy if {
	some env in github_production_environments
	is_string(env)
	lower(env) == lower(github_deploy_environment)
}

github_production_deploy if http_body.production_environment == true

github_approval contains {
	"id": "github.deployment.production",
	"reason": sprintf("deploys %s to %s", [github_repo, github_deploy_environment]),
	"route": "eng-oncall",
	"risk": "high",
	"action": "deploy",
	"summary": object.union(
		github_fields(["ref", "task", "description"]),
		{"repository": github_repo, "environment": github_deploy_environment},
	),
	"escalate_after": "15m",
} if {
	github_request
	http_method == "POST"
	github_rest == ["deployments"]
	github_production_deploy
}

# POST /repos/{o}/{r}/actions/workflows/{workflow}/dispatches
github_dispatched_workflow := github_segs[5] if {
	count(github_rest) == 4
	github_rest[0] == "actions"
	github_rest[1] == "workflows"
	github_rest[3] == "dispatches"
}

github_approval contains {
	"id": "github.workflow.deploy_dispatch",
	"reason": sprintf("runs the deploy workflow %s in %s", [github_dispatched_workflow, github_repo]),
	"route": "eng-oncall",
	"risk": "high",
	"action": "run_deploy_workflow",
	"summary": object.union(
		github_fields(["ref"]),
		{"repository": github_repo, "workflow": github_dispatched_workflow},
	),
	"escalate_after": "15m",
} if {
	github_request
	http_method == "POST"
	glob_any(github_deploy_workflow_patterns, github_dispatched_workflow)
}

# --- access: collaborators and secrets --------------------------------------

github_collaborator_change if {
	github_request
	http_method in {"PUT", "DELETE"}
	count(github_rest) == 2
	github_rest[0] == "collaborators"
}

github_change_word := "add or update" if http_method == "PUT"

github_change_word := "remove" if http_method == "DELETE"

github_approval contains {
	"id": "github.collaborator.change",
	"reason": sprintf("changes who can access %s (%s %s)", [github_repo, github_change_word, github_segs[4]]),
	"route": "eng-oncall",
	"risk": "high",
	"action": "change_collaborator",
	"summary": object.union(
		github_fields(["permission"]),
		{"repository": github_repo, "user": github_segs[4], "change": github_change_word},
	),
	"escalate_after": "30m",
} if github_collaborator_change

# Repository secrets: /repos/{o}/{r}/{actions|dependabot|codespaces}/secrets/{name}
# and /repos/{o}/{r}/environments/{env}/secrets/{name}.
github_secret := {"scope": github_repo, "secret": github_segs[5]} if {
	count(github_rest) == 3
	github_rest[0] in {"actions", "dependabot", "codespaces"}
	github_rest[1] == "secrets"
}

github_secret := {"scope": sprintf("%s (environment %s)", [github_repo, github_segs[4]]), "secret": github_segs[6]} if {
	count(github_rest) == 4
	github_rest[0] == "environments"
	github_rest[2] == "secrets"
}

# Organization secrets: /orgs/{org}/{actions|dependabot|codespaces}/secrets/{name}
github_secret := {"scope": sprintf("organization %s", [github_segs[1]]), "secret": github_segs[4]} if {
	count(github_lsegs) == 5
	github_lsegs[0] == "orgs"
	github_lsegs[2] in {"actions", "dependabot", "codespaces"}
	github_lsegs[3] == "secrets"
}

github_secret_change if {
	github_request
	http_method in {"PUT", "DELETE"}
	github_secret
}

github_approval contains {
	"id": "github.secret.change",
	"reason": sprintf("%s the secret %s of %s", [github_secret_verb, github_secret.secret, github_secret.scope]),
	"route": "eng-oncall",
	"risk": "high",
	"action": "change_secret",
	"summary": {"scope": github_secret.scope, "secret": github_secret.secret, "change": github_change_word},
	"escalate_after": "30m",
} if github_secret_change

github_secret_verb := "sets" if http_method == "PUT"

github_secret_verb := "deletes" if http_method == "DELETE"

# --- DELETEs handled here (generic.delete stays out of them) ----------------

delete_covered contains "github.repo.delete" if github_repo_delete

delete_covered contains "github.branch.delete" if github_branch_delete

delete_covered contains "github.collaborator.change" if {
	github_collaborator_change
	http_method == "DELETE"
}

delete_covered contains "github.secret.change" if {
	github_secret_change
	http_method == "DELETE"
}
