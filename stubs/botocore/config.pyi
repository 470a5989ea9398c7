from typing import Any

class Config:
    def __init__(
        self,
        *,
        connect_timeout: float = ...,
        read_timeout: float = ...,
        retries: dict[str, Any] = ...,
        s3: dict[str, Any] = ...,
        user_agent_extra: str = ...,
    ) -> None: ...
