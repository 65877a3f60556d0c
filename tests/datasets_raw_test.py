"""Raw-file reading (avl_jax/datasets/raw.py), items, metadata parsing and the bundled official metadata."""
import json
import os
import pathlib
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

import avl_jax.datasets  # noqa: F401  (registers the builders)
from avl_jax.datasets import builder_lib
from avl_jax.datasets import fake_raw
from avl_jax.datasets import items
from avl_jax.datasets import metadata
from avl_jax.datasets import raw

OPTIONS = raw.DecodeOptions(sample_rate=16000, audio_seconds=1.0)


# -- Audio. --------------------------------------------------------------------------------------------------------


def test_read_wav_averages_channels_and_scales(tmp_path):
  path = str(tmp_path / "a.wav")
  left, right = np.full(100, 0.5, np.float32), np.full(100, -0.25, np.float32)
  fake_raw.write_wav(path, np.stack([left, right], axis=1), rate=8000)
  samples, rate = raw.read_wav(path)
  assert rate == 8000 and samples.shape == (100,) and samples.dtype == np.float32
  np.testing.assert_allclose(samples, 0.125, atol=1e-4)


def test_truncated_and_garbage_wavs_are_unreadable(tmp_path):
  path = str(tmp_path / "a.wav")
  fake_raw.write_wav(path, np.zeros((1000, 1), np.float32))
  fake_raw._truncate(path, 0.5)
  with pytest.raises(raw.SkipError, match="truncated") as e:
    raw.read_wav(path)
  assert e.value.reason == "unreadable_audio"
  (tmp_path / "b.wav").write_bytes(b"RIFF garbage")
  with pytest.raises(raw.SkipError) as e:
    raw.read_wav(str(tmp_path / "b.wav"))
  assert e.value.reason == "unreadable_audio"


def test_unsupported_wav_sample_width_is_unreadable(tmp_path):
  import struct  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "wide.wav")
  data = bytes(50)  # 40-bit samples: a well-formed RIFF/WAVE header that no PCM reader here supports
  fmt = struct.pack("<HHIIHH", 1, 1, 16000, 16000 * 5, 5, 40)
  (tmp_path / "wide.wav").write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" +
                                      b"fmt " + struct.pack("<I", len(fmt)) + fmt +
                                      b"data" + struct.pack("<I", len(data)) + data)
  with pytest.raises(raw.SkipError, match="5-byte samples") as e:
    raw.read_wav(path)
  assert e.value.reason == "unreadable_audio" and e.value.file == path


def test_resample_length_and_tone():
  t = np.arange(22050) / 22050
  tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
  out = raw.resample(tone, 22050, 16000)
  assert out.shape == (16000,)
  spectrum = np.abs(np.fft.rfft(out))
  assert abs(np.argmax(spectrum) - 440) <= 1  # 1 s -> bins are 1 Hz


def test_window_audio_centre_and_records():
  clip = np.linspace(-0.5, 0.5, 40000, dtype=np.float32)  # 2.5 s at 16 kHz
  window, record = raw.window_audio(clip, 16000, OPTIONS, "x.wav")
  start = 40000 // 2 - 16000 // 2
  np.testing.assert_array_equal(window, np.round(clip[start:start + 16000] * 32767).astype(np.int16))
  assert record == {"rate": 16000, "samples": 40000, "offset": start, "fill": "none", "clipped": 0}
  whole, record = raw.window_audio(clip, 16000, raw.DecodeOptions(audio_seconds=0.0), "x.wav")
  assert whole.shape == (40000,) and record["offset"] == 0


@pytest.mark.parametrize("policy,fill", [("tile", "tiled"), ("pad", "padded")])
def test_short_audio_policies_are_recorded(policy, fill):
  clip = np.full(8000, 0.5, np.float32)  # 0.5 s < the 1 s window
  with pytest.raises(raw.SkipError) as e:
    raw.window_audio(clip, 16000, OPTIONS, "short.wav")
  assert e.value.reason == "audio_too_short"
  options = raw.DecodeOptions(sample_rate=16000, audio_seconds=1.0, short_audio=policy)
  window, record = raw.window_audio(clip, 16000, options, "short.wav")
  assert window.shape == (16000,) and record["fill"] == fill
  np.testing.assert_array_equal(window[:8000], 16384)
  np.testing.assert_array_equal(window[8000:], 16384 if policy == "tile" else 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_float_wav_is_skipped_not_zeroed_or_clipped(tmp_path, bad):
  """NaN used to be stored as 0 and +-inf as a full-scale spike (only counted as `clipped`)."""
  path = str(tmp_path / "f.wav")
  samples = np.full((1000, 2), 0.25, np.float32)
  samples[10:13, 0] = bad
  fake_raw.write_float_wav(path, samples, rate=16000)
  with pytest.raises(raw.SkipError, match="3 of 2000 sample values are not finite") as e:
    raw.read_wav(path)
  assert e.value.reason == "nonfinite_audio" and e.value.file == path
  assert ("3 NaN, 0 infinite" if np.isnan(bad) else "0 NaN, 3 infinite") in e.value.detail
  samples[10:13, 0] = 0.5  # the same file, finite, reads fine
  fake_raw.write_float_wav(path, samples, rate=16000)
  assert raw.read_wav(path)[0].shape == (1000,)
  with pytest.raises(raw.SkipError, match="nonfinite_audio"):  # any other source of a waveform
    raw.window_audio(np.array([0.0, np.nan] * 8000, np.float32), 16000, OPTIONS, "x.wav")


def test_nonfinite_mp4_audio_track_is_skipped(tmp_path):
  path = str(tmp_path / "v.mp4")
  audio = np.full((8000, 1), 0.1, np.float32)
  audio[100:104] = np.nan
  audio[200] = np.inf
  fake_raw.write_mp4(path, [np.zeros((48, 64, 3), np.uint8)] * 10, audio, rate=8000, audio_codec="pcm_f32le")
  for decode in (lambda: raw.decode_video(path), lambda: raw.decode_video_audio(path)):
    with pytest.raises(raw.SkipError, match=r"5 of 8000 sample values are not finite \(4 NaN, 1 infinite\)") as e:
      decode()
    assert e.value.reason == "nonfinite_audio" and e.value.file == path


def test_tiny_audio_is_too_short_whatever_the_policy():
  with pytest.raises(raw.SkipError, match="audio_too_short"):
    raw.window_audio(np.zeros(10, np.float32), 16000, raw.DecodeOptions(short_audio="tile"), "x.wav")


# -- Images and videos. ---------------------------------------------------------------------------------------------


def test_truncated_jpeg_is_unreadable(tmp_path):
  path = str(tmp_path / "f.jpg")
  fake_raw.write_jpeg(path, np.full((48, 64, 3), 100, np.uint8))
  assert raw.read_image(path).shape == (48, 64, 3)
  fake_raw._truncate(path, 0.3)
  with pytest.raises(raw.SkipError) as e:
    raw.read_image(path)
  assert e.value.reason == "unreadable_image"


def test_resize_short_side_records_sizes():
  pixels, record = raw.resize_short_side(np.zeros((48, 64, 3), np.uint8), 32)
  assert pixels.shape == (32, 43, 3) and record == {"size": [48, 64], "stored_size": [32, 43]}


def test_extreme_aspect_ratio_is_skipped_before_resizing(tmp_path):
  """A 3000 x 1 px frame at short side 256 would be 768,000 px wide: PIL's JPEG encoder fails ('broken data
  stream') on sides beyond 65,500 px, which used to crash the whole build."""
  path = str(tmp_path / "wide.jpg")
  fake_raw.write_jpeg(path, np.full((1, 3000, 3), 100, np.uint8))
  pixels = raw.read_image(path)
  with pytest.raises(raw.SkipError, match=r"1 x 3000 px \(H x W\) would be stored as 256 x 768000 px") as e:
    raw.resize_short_side(pixels, 256, path)
  assert e.value.reason == "extreme_aspect_ratio" and e.value.file == path
  assert raw.resize_short_side(pixels, 1, path)[0].shape == (1, 3000, 3)  # within the limit: kept
  with pytest.raises(raw.SkipError) as e:  # an encoder failure is a skip too
    raw.encode_jpeg(np.zeros((1, raw.JPEG_MAX_SIDE + 1, 3), np.uint8), 95, path)
  assert e.value.reason == "unencodable_image" and e.value.file == path and "1 x 65501 px" in e.value.detail


def test_unexpected_error_while_building_an_example_is_a_build_error_skip(tmp_path, monkeypatch):
  root = str(tmp_path)
  fake_raw.write_clip(root, "a", "frames")
  item = items.Item(key=3, example_id="a", clip=items.Clip.single("a"), source_class=(0,))
  resolved = items.resolve(item, root, OPTIONS)
  assert items.process(resolved, OPTIONS, 2)[1] is not None

  def broken(path):
    raise ZeroDivisionError("unforeseen")

  monkeypatch.setattr(raw, "read_image", broken)
  key, example, skipped = items.process(resolved, OPTIONS, 2)
  assert (key, example) == (3, None)
  assert (skipped.key, skipped.example_id, skipped.reason) == (3, "a", "build_error")
  assert skipped.file == resolved.files.frame
  assert skipped.detail.startswith("ZeroDivisionError: unforeseen (at datasets_raw_test.py:")
  assert skipped.detail.endswith("in broken)")


def test_decode_video_middle_frame_index_and_audio(tmp_path):
  path = str(tmp_path / "v.mp4")
  frames = [np.full((48, 64, 3), fake_raw.frame_grey(k), np.uint8) for k in range(30)]  # 3 s at 10 fps
  fake_raw.write_mp4(path, frames, fake_raw._tone("v", 3.0))
  middle = raw.decode_video(path, frame_position=0.5)
  assert middle.fps == 10.0 and middle.frame_time == pytest.approx(1.5, abs=0.051)
  assert abs(float(middle.frame.mean()) - fake_raw.frame_grey(15)) < 4
  indexed = raw.decode_video(path, frame_index=22)
  assert indexed.frame_time == pytest.approx(2.2, abs=1e-6)
  assert abs(float(indexed.frame.mean()) - fake_raw.frame_grey(22)) < 4
  assert middle.audio_rate == fake_raw.AUDIO_RATE and abs(middle.audio.size / middle.audio_rate - 3.0) < 0.1
  spectrum = np.abs(np.fft.rfft(middle.audio[:fake_raw.AUDIO_RATE]))  # first second: 1 Hz bins
  assert abs(np.argmax(spectrum) - fake_raw.clip_frequency("v")) <= 2


def test_frame_past_the_end_is_a_missing_frame(tmp_path):
  path = str(tmp_path / "v.mp4")
  fake_raw.write_mp4(path, [np.full((48, 64, 3), fake_raw.frame_grey(k), np.uint8) for k in range(30)],
                     fake_raw._tone("v", 3.0))
  assert raw.decode_video(path, frame_index=29).frame_time == pytest.approx(2.9, abs=1e-6)
  with pytest.raises(raw.SkipError, match="frame at 4.000 s requested") as e:  # frame 40 of a 30-frame video
    raw.decode_video(path, frame_index=40)
  assert e.value.reason == "missing_frame" and e.value.file == path


def test_cut_short_mp4_with_its_index_first_is_skipped(tmp_path):
  """Downloaded mp4s keep their index (moov) first, so a cut-off file still opens and decodes up to the cut."""
  import av  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "v.mp4")
  fake_raw.write_mp4(path, [np.full((48, 64, 3), fake_raw.frame_grey(k), np.uint8) for k in range(30)],
                     fake_raw._tone("v", 3.0), faststart=True)
  assert raw.decode_video(path, frame_position=0.5).audio.size > 0  # the whole file is fine
  with av.open(path) as container:
    audio_packets = [p.pos for p in container.demux() if p.stream.type == "audio" and p.pos is not None]
  data = pathlib.Path(path).read_bytes()
  cut = str(tmp_path / "cut.mp4")
  pathlib.Path(cut).write_bytes(data[:audio_packets[len(audio_packets) // 2]])  # at a packet boundary, mid-audio
  for decode in (lambda: raw.decode_video(cut, frame_position=0.25), lambda: raw.decode_video_audio(cut)):
    with pytest.raises(raw.SkipError, match="truncated: the audio track declares 3.00 s") as e:
      decode()
    assert e.value.reason == "unreadable_video"
  pathlib.Path(cut).write_bytes(data[:len(data) // 2])  # the middle frame itself is gone
  with pytest.raises(raw.SkipError) as e:
    raw.decode_video(cut, frame_position=0.5)
  assert e.value.reason in ("missing_frame", "unreadable_video")


def test_video_errors(tmp_path):
  silent = str(tmp_path / "silent.mp4")
  fake_raw.write_mp4(silent, [np.zeros((48, 64, 3), np.uint8)] * 5, None)
  with pytest.raises(raw.SkipError) as e:
    raw.decode_video(silent)
  assert e.value.reason == "no_audio_track"
  broken = str(tmp_path / "broken.mp4")
  fake_raw.write_mp4(broken, [np.zeros((48, 64, 3), np.uint8)] * 5, fake_raw._tone("b", 0.5))
  fake_raw._truncate(broken, 0.4)
  with pytest.raises(raw.SkipError) as e:
    raw.decode_video(broken)
  assert e.value.reason == "unreadable_video"
  import av  # pylint: disable=g-import-not-at-top
  sound_only = str(tmp_path / "sound_only.mp4")  # an audio-only mp4 (e.g. a download without its picture)
  with av.open(sound_only, "w", format="mp4") as container:
    stream = container.add_stream("aac", rate=fake_raw.AUDIO_RATE)
    stream.layout = "mono"
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = fake_raw.AUDIO_RATE
    for packet in list(stream.encode(frame)) + list(stream.encode()):
      container.mux(packet)
  with pytest.raises(raw.SkipError) as e:
    raw.decode_video(sound_only)
  assert e.value.reason == "no_video_track" and e.value.file == sound_only


def test_find_clip_files_layouts(tmp_path):
  root = str(tmp_path)
  fake_raw.write_clip(root, "a", "frames")
  fake_raw.write_clip(root, "b", "video")
  assert raw.find_clip_files(root, "a", "a", "a").frame.endswith("frames/a.jpg")
  assert raw.find_clip_files(root, "b", "b", "b").video.endswith("b.mp4")
  with pytest.raises(raw.SkipError) as e:
    raw.find_clip_files(root, "b", "b", "b", layout="frames")
  assert e.value.reason == "missing_files"
  with pytest.raises(raw.SkipError, match="missing_files"):
    raw.find_clip_files(root, "c", "c", "c")


def test_dir_listing_answers_like_stat_with_one_listing_per_folder(tmp_path, monkeypatch):
  root = str(tmp_path)
  fake_raw.write_clip(root, "a", "frames")
  fake_raw.write_clip(root, "b", "video")
  (tmp_path / "frames" / "c.jpg").write_bytes(b"x")  # frame without its wav
  listed = []
  iterdir = type(raw.epath.Path(root)).iterdir
  monkeypatch.setattr(type(raw.epath.Path(root)), "iterdir", lambda self: listed.append(str(self)) or iterdir(self))
  listing = raw.DirListing()
  for layout in ("auto", "frames", "video"):
    for clip in ("a", "b", "c", "d"):
      outcomes = []
      for use in (None, listing):
        try:
          outcomes.append(raw.find_clip_files(root, clip, clip, clip, layout, use))
        except raw.SkipError as e:
          outcomes.append((e.reason, e.file, e.detail))
      assert outcomes[0] == outcomes[1], (layout, clip)
  assert sorted(listed) == sorted(set(listed))  # each folder listed once, however many clips
  assert {os.path.basename(p) for p in listed} >= {"frames", "audio", os.path.basename(root)}


def test_read_mask_values_and_errors(tmp_path):
  mask = np.zeros((5, 7), np.uint8)
  mask[1:3, 2:5] = 1
  for i, value in enumerate([mask, mask.astype(bool), {"mask": mask.astype(np.float64)}, mask[..., None]]):
    path = tmp_path / f"m{i}.pkl"
    path.write_bytes(pickle.dumps(value))
    np.testing.assert_array_equal(raw.read_mask(str(path)), mask)
  bad = tmp_path / "bad.pkl"
  bad.write_bytes(pickle.dumps(np.full((3, 3), 0.5)))
  with pytest.raises(raw.SkipError, match="unreadable_mask"):
    raw.read_mask(str(bad))


# -- Boxes, metadata. ------------------------------------------------------------------------------------------------


def test_music_xywh_boxes_become_xyxy():
  # docs/metrics.md §2: xywh [0.25, 0.25, 0.5, 0.5] covers [0.25, 0.75) on both axes.
  boxes, clipped = items.normalized_xyxy(np.array([[0.25, 0.25, 0.5, 0.5]]), "xywh")
  np.testing.assert_allclose(boxes, [[0.25, 0.25, 0.75, 0.75]])
  assert not clipped
  # An out-of-range coordinate is clipped; inverted by it (official VGG-SS: y2 = -2.9e16), the box becomes empty.
  boxes, clipped = items.normalized_xyxy(np.array([[0.1, 0.2, 1.3, -2.9e16]]), "xyxy")
  np.testing.assert_allclose(boxes, [[0.1, 0.2, 1.0, 0.2]])
  assert clipped


def _box_item(boxes, box_format="xyxy"):
  return items.Item(key=0, example_id="e", clip=items.Clip.single("e"), source_class=(0,), boxes=tuple(boxes),
                    box_source=(0,) * len(boxes), box_format=box_format)


@pytest.mark.parametrize("box,box_format,message", [
    ([0.6, 0.2, 0.3, 0.5], "xyxy", r"inverted box 1 \(source 0\) \[0.6, 0.2, 0.3, 0.5\] \(xyxy\): x2 < x1 on the x"),
    ([0.1, 0.7, 0.3, 0.5], "xyxy", "y2 < y1 on the y axis"),
    ([0.5, 0.5, -0.2, 0.1], "xywh", "negative width/height on the x axis"),
    ([0.5, 0.5, 0.2, -0.1], "xywh", "negative width/height on the y axis"),
])
def test_inverted_boxes_are_malformed(box, box_format, message):
  good = [0.1, 0.1, 0.2, 0.2]
  with pytest.raises(raw.SkipError, match=message) as e:
    items.check_boxes(_box_item([good, box], box_format), "boxes.json", 16)
  assert e.value.reason == "malformed_box" and e.value.file == "boxes.json"


@pytest.mark.parametrize("box", [[0.3, 0.2, 0.3, 0.5], [0.26875, 1.0, 0.753125, 1.0],  # zero area (official)
                                 [0.534375, 0.3375, -2.8823037615171176e16, 0.909375],   # official corrupt x2
                                 [0.1, 0.2, 1.3, 0.4]])
def test_zero_area_and_out_of_range_boxes_are_kept(box):
  items.check_boxes(_box_item([box]), "boxes.json", 16)
  stored, _ = items.normalized_xyxy(np.array([box]), "xyxy")
  assert np.all(stored[:, 2:] >= stored[:, :2])  # nothing inverted is stored


def test_more_boxes_than_max_boxes_are_skipped():
  boxes = [[0.1, 0.1, 0.2, 0.2]] * 17
  items.check_boxes(_box_item(boxes[:16]), "boxes.json", builder_lib.MAX_BOXES)
  with pytest.raises(raw.SkipError, match="17 boxes > max_boxes=16") as e:
    items.check_boxes(_box_item(boxes), "boxes.json", builder_lib.MAX_BOXES)
  assert e.value.reason == "too_many_boxes"


@pytest.mark.parametrize("value", [[0.1, 0.2, 0.3], [0.1, 0.2, "x", 0.4], [0.1, float("nan"), 0.2, 0.3], None,
                                   [True, 0.1, 0.2, 0.3]])
def test_malformed_boxes(value):
  with pytest.raises(raw.SkipError) as e:
    items.check_box(value, "boxes.json")
  assert e.value.reason == "malformed_box"
  with pytest.raises(raw.SkipError, match="bbox_src2: ") as e:
    items.check_box(value, "boxes.json", field="bbox_src2")
  assert e.value.file == "boxes.json"


def test_bad_annotation_files_name_the_file(tmp_path):
  (tmp_path / "a.json").write_text("[{\"file\": \"x\", \"bbox\": []},")
  with pytest.raises(ValueError, match=r"a\.json: not valid JSON"):
    metadata.entries_by_file(str(tmp_path / "a.json"))
  (tmp_path / "b.json").write_text('[{"file": "x"}, {"class": "cello"}]')
  with pytest.raises(ValueError, match=r"b\.json: annotation 1 has no 'file' id"):
    metadata.entries_by_file(str(tmp_path / "b.json"))
  (tmp_path / "c.json").write_text('{"file": "x"}')
  with pytest.raises(ValueError, match=r"c\.json: expected a JSON list"):
    metadata.entries_by_file(str(tmp_path / "c.json"))
  (tmp_path / "d.csv").write_bytes(b"\xff\xfe\x00bad")
  with pytest.raises(ValueError, match=r"d\.csv: not a UTF-8 text list"):
    metadata.read_rows(str(tmp_path / "d.csv"))


def test_malformed_ids_and_unknown_classes_are_skipped_and_reported(tmp_path):
  """A row whose id is not {ytid}_{seg:03d}_{frame:05d}, or whose class is outside the vocabulary, is skipped
  and reported, not a crash."""
  tree = fake_raw.make_tree("music", "solo", str(tmp_path / "raw"), "frames")
  train_list = pathlib.Path(tree.root) / "metadata" / "music_solo_train.txt"
  rows = train_list.read_text().splitlines()
  good_id = rows[0].split(",")[0]
  train_list.write_text("\n".join(rows + ["not_a_frame_id,cello", f"{good_id[:-5]}99999,theremin"]) + "\n")
  builder = fake_raw.build("music/solo", tree.root, str(tmp_path / "tfds"))
  report = builder_lib.read_report(os.path.join(builder.data_dir, "skipped_train.csv"))
  reasons = {row["id"]: (row["reason"], row["file"]) for row in report}
  assert reasons["not_a_frame_id"][0] == "malformed_row" and reasons["not_a_frame_id"][1].endswith("train.txt")
  assert reasons[f"{good_id[:-5]}99999"][0] == "unknown_class"
  assert builder.info.splits["train"].num_examples == len(tree.expected["train"])


def test_bad_examples_of_a_build_are_counted_skips_not_crashes(tmp_path, monkeypatch):
  """A 3000 x 1 px frame, NaN audio, an inverted box, 17 boxes and an unforeseen exception: each is a skip row
  with its id and reason; the good examples build, and the metadata records the largest box count."""
  tree = fake_raw.make_tree("vggsound", "single", str(tmp_path / "raw"), "frames")
  meta = pathlib.Path(tree.root) / "metadata"
  entries = json.loads((meta / "vggss.json").read_text())
  rows = (meta / "vggsound_single_test.csv").read_text().splitlines()
  cls = fake_raw.VGGSOUND_CLASSES[0]
  bad = {"wide_000001": "extreme_aspect_ratio", "nanaudio_000002": "nonfinite_audio",
         "inverted_000003": "malformed_box", "manyboxes_000004": "too_many_boxes", "boom_000005": "build_error"}
  for clip_id in bad:
    fake_raw.write_clip(tree.root, clip_id, "frames")
    boxes = [fake_raw.box_for(clip_id)]
    if clip_id.startswith("inverted"):
      boxes.append([0.6, 0.2, 0.3, 0.5])
    elif clip_id.startswith("manyboxes"):
      boxes *= 17
    entries.append({"file": clip_id, "class": cls.replace("_", " "), "bbox": boxes})
    rows.append(f"{clip_id},{cls}")
  fake_raw.write_jpeg(str(pathlib.Path(tree.root) / "frames" / "wide_000001.jpg"), np.zeros((1, 3000, 3), np.uint8))
  nan_audio = np.full((16000, 1), 0.1, np.float32)
  nan_audio[5] = np.nan
  fake_raw.write_float_wav(str(pathlib.Path(tree.root) / "audio" / "nanaudio_000002.wav"), nan_audio)
  (meta / "vggss.json").write_text(json.dumps(entries))
  (meta / "vggsound_single_test.csv").write_text("\n".join(rows) + "\n")
  read_wav = raw.read_wav

  def read_wav_or_fail(path):
    if "boom" in path:
      raise KeyError("surprise")
    return read_wav(path)

  monkeypatch.setattr(raw, "read_wav", read_wav_or_fail)  # num_workers=1: decoded in this process
  builder = fake_raw.build("vggsound/single", tree.root, str(tmp_path / "tfds"),
                           overrides={"splits": ("test",), "max_missing_fraction": 0.9})
  report = builder_lib.read_report(os.path.join(builder.data_dir, "skipped_test.csv"))
  reasons = {row["id"]: row["reason"] for row in report}
  assert reasons == {**dict(tree.expected_skips["test"]), **bad}
  details = {row["id"]: row["detail"] for row in report}
  assert "inverted box 1" in details["inverted_000003"] and "17 boxes" in details["manyboxes_000004"]
  assert details["boom_000005"].startswith("KeyError: 'surprise'")
  assert builder.info.splits["test"].num_examples == len(tree.expected["test"])
  summary = builder.info.metadata["skipped"]["test"]
  assert summary["skipped"] == len(reasons) and summary["reasons"]["build_error"] == 1
  # The largest box count of what was decoded (test clips of the fake tree hold 1-3 boxes; 17 was skipped).
  assert builder.info.metadata["boxes"]["test"] == {"max_boxes": 3, "max_sources": 1, "empty_boxes": 0}


def test_underscore_class_names():
  assert metadata.underscore_class("female speech, woman speaking") == "female_speech_woman_speaking"
  assert metadata.underscore_class("elk bugling") == "elk_bugling"


def test_manual_metadata_overrides_bundled(tmp_path):
  assert metadata.find("music_solo.json", str(tmp_path)).origin == "bundled"
  (tmp_path / "metadata").mkdir()
  (tmp_path / "metadata" / "music_solo.json").write_text(json.dumps([]))
  found = metadata.find("music_solo.json", str(tmp_path))
  assert found.origin == "manual" and found.path == str(tmp_path / "metadata" / "music_solo.json")
  assert metadata.find("vggsound_single_train.txt", str(tmp_path), bundled=False) is None


def test_bundled_metadata_has_its_license_and_attribution():
  assert (metadata.BUNDLED_DIR / "LICENSE").read_text().lstrip().startswith("Apache License")
  readme = (metadata.BUNDLED_DIR / "README.md").read_text()
  assert "stoneMo/AVGN" in readme and "Apache License" in readme


@pytest.mark.parametrize("name,split,count", [
    ("music/solo", "test", 2124), ("music/duet", "test", 1020), ("music/solo", "train", 44532),
    ("vggsound/single", "test", 5158), ("vggsound/duet", "test", 5158), ("vgginstruments/single", "test", 446),
    ("vgginstruments/multi", "test", 446), ("vgginstruments/single", "train", 33934)])
def test_bundled_metadata_parses_completely(tmp_path, name, split, count):
  """Every row of the official files becomes an item (no malformed rows or boxes, classes all known)."""
  builder = tfds.builder(name, data_dir=str(tmp_path))
  parsed = builder._split_items(split, str(tmp_path))  # pylint: disable=protected-access
  assert len(parsed.items) == count and not parsed.skipped
  assert all(f.origin == "bundled" for f in parsed.files)
  # No official example is dropped by the box checks (VGG-SS's 12 corrupt -2.9e16 boxes are clipped, kept).
  check = builder_lib._check_boxes_all  # pylint: disable=protected-access
  kept, rejected = check(parsed.items, "x", builder_lib.MAX_BOXES)
  assert len(kept) == count and not rejected


def test_bundled_metadata_content():
  solo = tfds.builder("music/solo")._split_items("test", "/nonexistent")  # pylint: disable=protected-access
  first = solo.items[0]
  assert first.example_id == "-_-TDDxoaAc_000_00000" and first.box_format == "xywh"
  assert first.clip.video_name == "-_-TDDxoaAc" and first.clip.frame_index == 0
  duet = tfds.builder("vggsound/duet")._split_items("test", "/nonexistent")  # pylint: disable=protected-access
  item = duet.items[0]
  assert (item.example_id, item.partner_id) == ("zpWuikVorYg_000032", "Rtg1SUrxOPY_000130")
  assert item.box_format == "xyxy" and set(item.box_source) == {0, 1}
  counts = np.bincount([len(i.boxes) for i in
                        tfds.builder("vggsound/single")._split_items("test", "/x").items])  # pylint: disable=protected-access
  np.testing.assert_array_equal(counts[1:], [4619, 385, 94, 37, 18, 3, 2])  # docs/datasets.md §4


def test_missing_vggsound_train_list_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="vggsound_single_train.txt"):
    tfds.builder("vggsound/single")._split_items("train", str(tmp_path))  # pylint: disable=protected-access


def test_config_overrides_and_validation(tmp_path):
  builder = tfds.builder("music/solo", data_dir=str(tmp_path), config_overrides={"frame_short_side": 128})
  assert builder.builder_config.frame_short_side == 128 and builder.builder_config.name == "solo"
  with pytest.raises(ValueError, match="num_classes"):
    tfds.builder("music/solo", data_dir=str(tmp_path), config_overrides={"num_classes": 3})
  with pytest.raises(ValueError, match="short_audio"):
    tfds.builder("music/solo", data_dir=str(tmp_path), config_overrides={"short_audio": "loop"})


def test_skip_report_round_trip(tmp_path):
  skipped = [items.Skipped(3, "b", "/x/b.jpg", "unreadable_image", 'OSError: "bad", really'),
             items.Skipped(1, "a", "/x/a.mp4", "missing_files")]
  path = str(tmp_path / "r.csv")
  builder_lib.write_report(path, skipped)
  rows = builder_lib.read_report(path)
  assert [r["id"] for r in rows] == ["a", "b"]  # metadata (key) order
  assert rows[1]["detail"] == 'OSError: "bad", really' and set(rows[0]) == set(builder_lib.REPORT_COLUMNS)
  line = builder_lib._report_line(skipped[0])  # pylint: disable=protected-access
  assert builder_lib._parse_report_lines(line + "\n") == [skipped[0]]  # pylint: disable=protected-access
  assert os.path.exists(path)
