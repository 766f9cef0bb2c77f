"""``opom web`` without a browser (fast tier): the HTTP API with a stub face detector and stub masks.

What the page does in a real browser is tests/test_web_browser.py (``browser`` marker).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from test_cloak import StubDetector, face_points, make_mask, sha, texture

from opom.cloak import protect as cloak_protect
from opom.cloak.cli import main
from opom.cloak.protect import ProtectSettings
from opom.web.server import STATIC, create_app

SRC = Path(__file__).resolve().parents[1] / "src"


@contextlib.asynccontextmanager
async def page(root: Path, **kw):
    async with TestClient(TestServer(create_app(root, **kw))) as client:
        yield client


async def new_session(client) -> str:
    r = await client.post("/api/session")
    assert r.status == 200
    return (await r.json())["session"]


def form(*paths: Path, field: str = "files", **fields) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for key, value in fields.items():
        data.add_field(key, str(value))
    for path in paths:
        data.add_field(field, path.read_bytes(), filename=path.name, content_type="application/octet-stream")
    return data


async def wait(client, sid: str, job: str, timeout: float = 60.0) -> dict:
    for _ in range(int(timeout / 0.05)):
        status = await (await client.get(f"/api/s/{sid}/jobs/{job}")).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


async def run_job(client, sid: str, kind: str, data=None) -> dict:
    r = await client.post(f"/api/s/{sid}/{kind}", data=data)
    body = await r.json()
    assert r.status == 202, body
    return await wait(client, sid, body["job"])


async def load_mask(client, sid: str, mask: Path) -> dict:
    r = await client.post(f"/api/s/{sid}/mask", data=form(mask, field="file"))
    return {"status": r.status} | await r.json()


def photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(texture(seed=seed)).save(path)
    return path


def stub() -> StubDetector:
    return StubDetector([face_points()])


# --------------------------------------------------------------------------------------------- the page


def test_page_and_its_files_are_served_locally_with_no_outside_address(tmp_path):
    async def body():
        async with page(tmp_path) as client:
            html = await (await client.get("/")).text()
            for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
                assert ref.startswith("/static/"), ref  # nothing from a CDN: the page works offline
                assert (await client.get(ref)).status == 200
    asyncio.run(body())
    for file in STATIC.iterdir():  # no outside address anywhere in the page's code
        assert not re.search(r"https?://(?!127\.0\.0\.1)", file.read_text()), file.name


def test_other_hosts_and_cross_site_writes_are_refused(tmp_path):
    async def body():
        async with page(tmp_path) as client:
            r = await client.get("/", headers={"Host": "attacker.example"})  # DNS rebinding
            assert r.status == 403
            r = await client.post("/api/session", headers={"Sec-Fetch-Site": "cross-site"})
            assert r.status == 403
            assert (await client.post("/api/session", headers={"Sec-Fetch-Site": "same-origin"})).status == 200
            assert (await client.get("/api/s/nosuchsession/jobs/x")).status == 404
    asyncio.run(body())


# -------------------------------------------------------------------------------------------- protect


def test_protect_through_the_page_matches_the_api_and_shows_before_after(tmp_path):
    mask = make_mask(tmp_path / "alice.safetensors")
    src = photo(tmp_path / "in" / "holiday.png")
    before = sha(src)
    expected = cloak_protect([src], mask, out=tmp_path / "api", settings=ProtectSettings(choose="largest"),
                             detector=stub(), progress=False, quiet=True)[0]

    async def body():
        async with page(tmp_path / "root", detector=stub()) as client:
            sid = await new_session(client)
            info = await load_mask(client, sid, mask)
            assert info["status"] == 200 and info["identity"] == "alice" and info["match"] is False
            saved = await (await client.get(info["download"])).read()
            assert saved == mask.read_bytes()  # the mask file can be saved back
            status = await run_job(client, sid, "protect", form(src, choose="largest"))
            assert status["state"] == "done", status
            card = status["result"]["files"][0]
            assert card["outcome"] == "protected" and card["ok"] and card["faces"] == 1
            assert set(card["pictures"]) == {"before", "after", "zoom_before", "zoom_after", "change"}
            got = await (await client.get(card["download"])).read()
            assert got == (tmp_path / "api" / "holiday.png").read_bytes()  # what the API writes, byte for byte
            zb = np.asarray(Image.open(io.BytesIO(await (await client.get(card["pictures"]["zoom_before"])).read())))
            za = np.asarray(Image.open(io.BytesIO(await (await client.get(card["pictures"]["zoom_after"])).read())))
            assert zb.shape == za.shape and (zb != za).any()  # the zoom shows the face, changed by the mask
            assert "protect: 1 path(s): protected 1" in status["output"]  # the command line's own summary
            assert str(tmp_path) not in status["output"]  # ...without the server's temporary folders
            import zipfile

            archive = await (await client.get(status["result"]["zip"])).read()
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                assert zf.namelist() == ["holiday.png"] and zf.read("holiday.png") == got
    asyncio.run(body())
    assert expected["outcome"] == "protected" and sha(src) == before


def test_protect_needs_a_mask_and_check_needs_protected_photos(tmp_path):
    src = photo(tmp_path / "p.png")

    async def body():
        async with page(tmp_path / "root", detector=stub()) as client:
            sid = await new_session(client)
            r = await client.post(f"/api/s/{sid}/protect", data=form(src))
            assert r.status == 400 and (await r.json())["error"].startswith("error: no mask yet")
            status = await run_job(client, sid, "check")
            assert status["state"] == "failed" and status["error"].startswith("error: nothing to check yet")
            # nothing was left behind by the refused request
            assert [p.name for p in (tmp_path / "root" / sid / "jobs").iterdir()] == [status["id"]]
    asyncio.run(body())


# ------------------------------------------------------------------------------- same words as the CLI


def test_bad_files_get_the_outcomes_and_reasons_of_the_cli(tmp_path, capsys):
    mask = make_mask(tmp_path / "alice.safetensors")
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not a photo")
    (bad / "empty.png").write_bytes(b"")
    good = io.BytesIO()
    Image.fromarray(texture()).save(good, "JPEG")
    (bad / "cut.jpg").write_bytes(good.getvalue()[:300])
    files = sorted(bad.iterdir())
    assert main(["protect", *map(str, files), "--mask", str(mask), "--choose", "largest", "--out",
                 str(tmp_path / "cli"), "--no-progress"]) == 1
    capsys.readouterr()
    cli = {Path(e["source"]).name: (e["outcome"], e["reason"])
           for e in map(json.loads, (tmp_path / "cli" / "opom_protect_report.jsonl").read_text().splitlines())}

    async def body():
        async with page(tmp_path / "root", detector=stub()) as client:
            sid = await new_session(client)
            await load_mask(client, sid, mask)
            status = await run_job(client, sid, "protect", form(*files, choose="largest"))
            return {c["name"]: (c["outcome"], c["reason"]) for c in status["result"]["files"]}, status

    web, status = asyncio.run(body())
    assert web == cli and {o for o, _ in web.values()} == {"not_an_image", "unreadable"}
    assert "zip" in status["result"] and status["result"]["zip"] is None  # nothing protected, nothing to zip


def test_bad_mask_and_bad_enrolment_get_the_error_line_of_the_cli(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    other = make_mask(tmp_path / "other.safetensors", template="sphereface_96x112")
    notes = tmp_path / "notes.txt"
    notes.write_text("my photos are elsewhere")
    src = photo(tmp_path / "p.png")

    def cli(*argv) -> str:
        assert main(list(argv)) == 2
        line = capsys.readouterr().err.strip()
        return line.replace(f"{tmp_path}/", "")

    async def body():
        async with page(tmp_path / "root", detector=stub()) as client:
            sid = await new_session(client)
            words = {}
            for mask in (junk, other):
                got = await load_mask(client, sid, mask)
                assert got["status"] == 400
                words[mask.name] = got["error"]
            status = await run_job(client, sid, "enroll", form(notes, iterations=1))
            words["enroll"] = status["error"]
            assert status["state"] == "failed"
            assert not list((tmp_path / "root" / sid / "masks").iterdir())  # refused masks are not kept
            return words

    words = asyncio.run(body())
    for mask in (junk, other):
        assert words[mask.name] == cli("protect", str(src), "--mask", str(mask), "--choose", "largest")
    assert words["enroll"] == cli("enroll", str(notes), "--out", str(tmp_path / "m.safetensors"))
    assert "not an image file" in words["enroll"]


# --------------------------------------------------------------------------------- uploads and sessions


def test_uploads_stream_to_disk_and_stop_at_the_limit_with_a_clear_message(tmp_path):
    big = tmp_path / "big.bin"
    payload = np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 12345, dtype=np.uint8).tobytes()
    big.write_bytes(payload)

    async def body():
        async with page(tmp_path / "root", max_upload_mb=1, detector=stub()) as client:
            sid = await new_session(client)
            await load_mask(client, sid, make_mask(tmp_path / "m.safetensors"))
            r = await client.post(f"/api/s/{sid}/protect", data=form(big))
            body = await r.json()
            assert r.status == 413 and "limit of 1 MB" in body["error"] and "--max-upload-mb" in body["error"]
            assert not (tmp_path / "root" / sid / "jobs").exists() or \
                not list((tmp_path / "root" / sid / "jobs").iterdir())  # the partial upload is gone
        async with page(tmp_path / "root2", max_upload_mb=8, detector=stub()) as client:
            sid = await new_session(client)
            await load_mask(client, sid, make_mask(tmp_path / "m.safetensors"))
            status = await run_job(client, sid, "protect", form(big, choose="largest"))  # 4 chunks of 1 MiB
            stored = next((tmp_path / "root2" / sid / "jobs").glob("*/uploads/big.bin"))
            assert stored.read_bytes() == payload
            assert status["result"]["files"][0]["outcome"] == "not_an_image"
    asyncio.run(body())


def test_two_tabs_at_once_keep_their_own_masks_and_files(tmp_path):
    src = photo(tmp_path / "in" / "p.png")
    masks = [make_mask(tmp_path / f"m{k}.safetensors", seed=k) for k in (1, 2)]
    expected = []
    for k, mask in enumerate(masks):
        cloak_protect([src], mask, out=tmp_path / f"api{k}", settings=ProtectSettings(choose="largest"),
                      detector=stub(), progress=False, quiet=True)
        expected.append((tmp_path / f"api{k}" / "p.png").read_bytes())
    assert expected[0] != expected[1]

    async def body():
        async with page(tmp_path / "root", detector=stub()) as client:
            sids = [await new_session(client), await new_session(client)]
            for sid, mask in zip(sids, masks, strict=True):
                await load_mask(client, sid, mask)
            # both tabs upload the same file name and queue their jobs before either is looked at
            posted = [await client.post(f"/api/s/{sid}/protect", data=form(src, choose="largest")) for sid in sids]
            jobs = [(await r.json())["job"] for r in posted]
            done = [await wait(client, sid, job) for sid, job in zip(sids, jobs, strict=True)]
            got = [await (await client.get(d["result"]["files"][0]["download"])).read() for d in done]
            assert got == expected
            # one tab cannot reach the other's files, not even by a path that climbs out of its folder
            other = done[0]["result"]["files"][0]["download"].split("/files/", 1)[1].split("?")[0]
            assert (await client.get(f"/api/s/{sids[1]}/files/../{sids[0]}/{other}")).status == 404
            assert (await client.get(f"/api/s/{sids[1]}/jobs/{jobs[0]}")).status == 404
            # closing a tab removes its files; the other tab keeps working
            assert (await (await client.post(f"/api/s/{sids[0]}/close")).json())["closed"]
            assert not (tmp_path / "root" / sids[0]).exists() and (tmp_path / "root" / sids[1]).is_dir()
            assert (await client.get(done[1]["result"]["files"][0]["download"])).status == 200
    asyncio.run(body())


# ------------------------------------------------------------------------------------------ the command


def _start(*args: str) -> tuple[subprocess.Popen, str, Path]:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "opom.cloak.cli", "web", "--no-browser", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first, second = proc.stdout.readline(), proc.stdout.readline()
    url = re.search(r"http://127\.0\.0\.1:\d+/", first)
    assert url, first + second
    root = Path(re.search(r"stay in (\S+)", second).group(1))
    return proc, url.group(0), root


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_opom_web_listens_on_loopback_only_and_removes_its_uploads_on_exit(tmp_path, sig):
    import urllib.request

    proc, url, root = _start()
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with urllib.request.urlopen(urllib.request.Request(url + "api/session", method="POST"), timeout=10) as r:
            sid = json.loads(r.read())["session"]
        assert (root / sid).is_dir()
        out = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True)
        if out.returncode == 0:  # iproute2 present: the only listener is 127.0.0.1
            assert [line.split()[3] for line in out.stdout.splitlines()] == [f"127.0.0.1:{port}"]
        proc.send_signal(sig)
        rest = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert not root.exists() and f"removed {root}" in rest


def test_opom_web_busy_port_is_one_error_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["web", "--no-browser", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: port {port} is in use: choose another --port, or leave it out for a free one"]


def test_a_video_is_protected_and_shown_by_its_first_frame(tmp_path):
    pytest.importorskip("av")
    from opom.cloak.video import pan_zoom_clip

    clip = pan_zoom_clip(texture(), tmp_path / "clip.mp4", frames=6, size=(320, 240))
    detector = StubDetector([face_points(1.0, 0, (100, 60))])

    async def body():
        async with page(tmp_path / "root", detector=detector) as client:
            sid = await new_session(client)
            await load_mask(client, sid, make_mask(tmp_path / "m.safetensors"))
            status = await run_job(client, sid, "protect", form(clip, choose="largest"))
            card = status["result"]["files"][0]
            assert (card["kind"], card["outcome"], card["faces"]) == ("video", "protected", 1), card
            assert set(card["pictures"]) == {"before", "after"}
            first = [np.asarray(Image.open(io.BytesIO(await (await client.get(card["pictures"][k])).read())))
                     for k in ("before", "after")]
            assert first[0].shape == (240, 320, 3) and (first[0] != first[1]).any()
            video = await (await client.get(card["download"])).read()
            assert video[4:8] == b"ftyp"  # an MP4, as written by protect
    asyncio.run(body())
