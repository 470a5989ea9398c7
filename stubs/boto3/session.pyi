from typing import Any

from botocore.config import Config

class Credentials:
    access_key: str
    secret_key: str
    token: str | None

class Session:
    def __init__(
        self,
        aws_access_key_id: str | None = ...,
        aws_secret_access_key: str | None = ...,
        aws_session_token: str | None = ...,
        region_name: str | None = ...,
        profile_name: str | None = ...,
    ) -> None: ...
    def get_credentials(self) -> Credentials | None: ...
    # The client's methods are made at run time from the service's model.
    def client(
        self,
        service_name: str,
        region_name: str | None = ...,
        endpoint_url: str | None = ...,
        aws_access_key_id: str | None = ...,
        aws_secret_access_key: str | None = ...,
        config: Config | None = ...,
    ) -> Any: ...
