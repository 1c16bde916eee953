"""upload_frame: the latest camera frame, attached to the next user turn."""

from __future__ import annotations

import base64

from quart import Blueprint, Response, request

from app._errors import ApiError
from app.routes._common import authorised_session, read_small_body, server_config

bp = Blueprint("frames", __name__)

MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}


@bp.post("/api/sessions/<session_id>/upload_frame")
async def upload_frame(session_id: str) -> Response:
    session = authorised_session(session_id)
    with session.request():
        mime = request.mimetype
        if mime not in MAGIC:
            raise ApiError(
                415, "unsupported_media_type", "send image/jpeg or image/png", param="Content-Type"
            )
        limit = server_config().max_frame_bytes
        data = await read_small_body(limit, "image_too_large", "frames")
        if not data.startswith(MAGIC[mime]):
            raise ApiError(400, "invalid_image", f"the body is not a {mime} image")
        session.latest_frame = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        return Response("", status=204)
