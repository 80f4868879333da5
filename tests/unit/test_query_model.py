"""QueryModel: one-pass query validation, documented exactly as FastAPI documents it."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, Query

from service.api.problems import install_problem_handlers
from service.api.query import QueryModel
from service.models.message import ListParams

QUERY = QueryModel(ListParams)


def _apps() -> tuple[FastAPI, FastAPI]:
    """The same query read by FastAPI (``Query()`` model) and by QueryModel."""
    by_fastapi, by_model = FastAPI(), FastAPI()

    @by_fastapi.get("/list")
    async def plain(params: Annotated[ListParams, Query()]) -> dict[str, object]:
        return params.model_dump(mode="json", by_alias=True)

    @by_model.get("/list", openapi_extra={"parameters": QUERY.parameters})
    async def fast(params: Annotated[ListParams, Depends(QUERY)]) -> dict[str, object]:
        return params.model_dump(mode="json", by_alias=True)

    for app in (by_fastapi, by_model):
        install_problem_handlers(app)
    return by_fastapi, by_model


def test_the_parameters_are_documented_as_fastapi_documents_them() -> None:
    by_fastapi, by_model = _apps()
    want = by_fastapi.openapi()["paths"]["/list"]["get"]["parameters"]
    got = by_model.openapi()["paths"]["/list"]["get"]["parameters"]
    assert got == want
    assert [p["name"] for p in got][:3] == ["protocol", "folder", "limit"]


async def test_values_and_errors_match_fastapis() -> None:
    queries = [
        "limit=7&unseen=true&since=2024-02-01&from=a%40b&count=1&unknown=x",
        "limit=1&limit=9",  # repeated: the last counts
        "limit=500",
        "since=yesterday",
        "protocol=smtp",
    ]
    answers = []
    for app in _apps():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            answers.append([(await client.get(f"/list?{q}")) for q in queries])
    for plain, fast in zip(*answers, strict=True):
        assert fast.status_code == plain.status_code
        if plain.status_code == 200:
            assert fast.json() == plain.json()
        else:
            assert fast.json()["code"] == plain.json()["code"] == "validation-failed"
            assert fast.json()["detail"] == plain.json()["detail"]
    assert answers[1][0].json()["limit"] == 7 and answers[1][0].json()["from"] == "a@b"
    assert answers[1][1].json()["limit"] == 9
