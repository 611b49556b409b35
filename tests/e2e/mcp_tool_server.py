"""A real MCP server, built with the `mcp` package, for the gateway tests.

    python mcp_tool_server.py LOG stdio
    python mcp_tool_server.py LOG http PORT

Every tool call that reaches it is appended to LOG as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

from mcp.server.mcpserver import MCPServer

LOG = sys.argv[1]
server = MCPServer("tool-server")


def record(tool: str, args: dict) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps({"tool": tool, "args": args}) + "\n")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    record("echo", {"text": text})
    return f"echo: {text}"


@server.tool()
def delete_repo(repo: str) -> str:
    """Delete a repository (gated)."""
    record("delete_repo", {"repo": repo})
    return f"deleted {repo}"


@server.tool()
def show_env() -> str:
    """The names of the environment variables this process has."""
    record("show_env", {})
    return json.dumps(sorted(os.environ))


if __name__ == "__main__":
    if sys.argv[2] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[3]))
