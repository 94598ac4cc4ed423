"""A small MCP server (the official mcp package's MCPServer, stdio) for the gateway's tests.

Tools: ``echo`` (harmless), ``delete_everything`` (the one a passport forbids), ``wait``
(answers after some seconds), ``rm *`` (a name no scope rule can express). A resource and a
prompt. With ``--pid-file F`` it writes its pid there, so a test can see it gone.
"""

import logging
import os
import sys
import time

from mcp.server.mcpserver import MCPServer

logging.disable(logging.WARNING)  # its warning about the "rm *" name is expected
server = MCPServer("files")


@server.tool()
def echo(text: str, times: int = 1) -> str:
    """Echo the text back."""
    return text * times


@server.tool()
def delete_everything(path: str, confirm: bool = False) -> str:
    """What the passport must never let through."""
    return f"deleted everything under {path}"


@server.tool()
def wait(seconds: float) -> str:
    """Answer after ``seconds``."""
    time.sleep(seconds)
    return "done"


@server.tool(name="rm *")
def rm_star() -> str:
    """A tool whose name has a space and a wildcard."""
    return "removed"


@server.resource("notes://public")
def public_note() -> str:
    return "a public note"


@server.resource("notes://secret")
def secret_note() -> str:
    return "the secret note"


@server.prompt()
def greet(name: str) -> str:
    return f"Say hello to {name}"


if __name__ == "__main__":
    if "--pid-file" in sys.argv:
        with open(sys.argv[sys.argv.index("--pid-file") + 1], "w") as pid_file:
            pid_file.write(str(os.getpid()))
    server.run("stdio")
