"""OpenAI-compatible HTTP server (Starlette + uvicorn) over the cluster client.

``create_app(ServerConfig(...))`` builds the app; ``mooncake serve`` runs it.
"""

from mooncake.server.app import create_app
from mooncake.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
