"""Phone JPEGs with data after the primary image's EOI, built from real parts
per each format's published layout, and the helpers that take them apart.

Each builder returns the file's bytes (and writes them to path when given
one), the same bytes for the same arguments: the primary is conftest's
make_jpeg (libjpeg-turbo), the clips are ffmpeg's testsrc encoded with x264
or x265 in bit-exact mode, and every structure around them is written here,
field by field, with the section of the specification it follows.

  google_motion_photo  Motion Photo 1.0: GCamera + Container XMP, MP4 after EOI
  mvimg                the older MicroVideo XMP, MP4 after EOI
  samsung_sef          MotionPhoto_Data + MP4 + SEF directory (SEFH..SEFT)
  mpf_gainmap          Ultra HDR: MPF index + gain map JPEG after EOI
  pixel_ultrahdr_motion  both of the above at once, as current Pixels write
  trailing_byte        one byte after EOI
  trailing_zeros       4,096 zero bytes after EOI

The helpers (eoi_offset, header_segments, scan, trailer, from_end_video,
mpf_images, exiftool_extract) are what the mount tests check a view with;
cases() says, per builder, what a view must keep and how to read it back.
"""
import dataclasses
import functools
import os
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET

from conftest import make_jpeg

# Namespaces, by URI (prefixes are the writers' choice, XMP Part 1 §7.3)
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_GCAMERA = "http://ns.google.com/photos/1.0/camera/"
NS_CONTAINER = "http://ns.google.com/photos/1.0/container/"
NS_ITEM = "http://ns.google.com/photos/1.0/container/item/"
NS_HDRGM = "http://ns.adobe.com/hdr-gain-map/1.0/"

# Adobe XMP Specification Part 3 §1.1.3: the APP1 signature of standard XMP
XMP_SIG = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_SIG = b"Exif\x00\x00"
MPF_SIG = b"MPF\x00"

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
# T.81 Table B.1: markers that stand alone, without a length
STANDALONE = {0x01, SOI, EOI} | set(range(0xD0, 0xD8))

# The clip every motion photo carries: small, 1 s, 10 frames a second so
# that 500,000 us is a frame's presentation time.
CLIP_W, CLIP_H, CLIP_FPS = 160, 120, 10
PRESENTATION_US = 500_000


# ---------------------------------------------------------------------------
# JPEG structure (ITU-T T.81 Annex B)

def segment(marker, payload):
    """A marker segment: 0xFF, the marker, a 16-bit big-endian length that
    counts itself and the payload (T.81 B.1.1.4)."""
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(f"segment payload of {len(payload)} bytes does not fit")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def segments(data):
    """The marker segments from SOI up to (not including) the first SOS, as
    (marker, offset, total length) in file order. Fill bytes (0xFF) before
    a marker are skipped (T.81 B.1.1.2)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG: no SOI")
    out, i = [], 2
    while True:
        if i >= len(data) or data[i] != 0xFF:
            raise ValueError(f"no marker at {i}")
        while i + 1 < len(data) and data[i + 1] == 0xFF:
            i += 1
        if i + 1 >= len(data):
            raise ValueError("truncated before a marker")
        m = data[i + 1]
        if m == SOS or m in STANDALONE:
            return out
        if i + 4 > len(data):
            raise ValueError("truncated segment length")
        n = 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if n < 4 or i + n > len(data):
            raise ValueError(f"segment 0x{m:02x} at {i} runs past the end")
        out.append((m, i, n))
        i += n


def eoi_offset(data):
    """The offset just past the primary image's EOI: marker segments are
    stepped over by their lengths (so an Exif thumbnail's EOI inside APP1
    is not taken for it), and each scan's entropy-coded data is walked to
    the next marker, passing stuffed 0xFF00 bytes, RSTn markers and fill
    bytes (T.81 B.1.1.2, B.1.1.5, F.1.2.3). Progressive files have several
    scans with tables between them; all are walked. Raises ValueError on a
    file that ends before its EOI."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG: no SOI")
    i, n = 2, len(data)
    while True:
        if i >= n or data[i] != 0xFF:
            raise ValueError(f"no marker at {i}")
        while i + 1 < n and data[i + 1] == 0xFF:
            i += 1
        if i + 1 >= n:
            raise ValueError("truncated before a marker")
        m = data[i + 1]
        if m == EOI:
            return i + 2
        if m in STANDALONE:
            i += 2
            continue
        if i + 4 > n:
            raise ValueError("truncated segment length")
        seglen = int.from_bytes(data[i + 2:i + 4], "big")
        i += 2 + seglen
        if seglen < 2 or i > n:
            raise ValueError("segment runs past the end")
        if m != SOS:
            continue
        # entropy-coded data: runs to the first 0xFF not followed by 0x00,
        # an RSTn or another 0xFF
        while True:
            j = data.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                raise ValueError("entropy-coded data runs past the end")
            b = data[j + 1]
            if b == 0x00 or 0xD0 <= b <= 0xD7:
                i = j + 2
            elif b == 0xFF:
                i = j + 1
            else:
                i = j
                break


def header_segments(data):
    """The APPn/COM segments between SOI and the first other marker, as
    bytes (what a view keeps byte for byte)."""
    end = 2
    for m, off, ln in segments(data):
        if not (0xE0 <= m <= 0xEF or m == 0xFE):
            break
        end = off + ln
    return data[2:end]


def scan(data):
    """From the first marker after the header segments (the tables) through
    the primary's EOI: the part a view may encode differently."""
    return data[2 + len(header_segments(data)):eoi_offset(data)]


def trailer(data):
    """Everything after the primary image's EOI."""
    return data[eoi_offset(data):]


def strip_app(jpeg):
    """A JPEG without its APPn segments (libjpeg-turbo writes a JFIF APP0;
    phones do not, and Exif 2.32 §4.5.4 wants APP1 right after SOI)."""
    out, end = bytearray(b"\xff\xd8"), 2
    for m, off, ln in segments(jpeg):
        if not 0xE0 <= m <= 0xEF:
            out += jpeg[off:off + ln]
        end = off + ln
    return bytes(out + jpeg[end:])


def with_header(jpeg, *segs):
    """jpeg (without APPn) with segs inserted right after SOI, in order."""
    assert jpeg[:2] == b"\xff\xd8"
    return b"\xff\xd8" + b"".join(segs) + jpeg[2:]


# ---------------------------------------------------------------------------
# TIFF IFDs, for Exif (Exif 2.32 §4.6.2, TIFF 6.0 §2) and MPF (DC-007 §5.2.3)

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED = 1, 2, 3, 4, 5, 7


def _value(bo, typ, v):
    """An IFD entry's value bytes and count."""
    if typ == ASCII:
        b = v.encode() + b"\x00"
        return b, len(b)
    if typ in (BYTE, UNDEFINED):
        return bytes(v), len(v)
    vals = v if isinstance(v, list) else [v]
    if typ == RATIONAL:
        return b"".join(struct.pack(bo + "II", *r) for r in vals), len(vals)
    fmt = {SHORT: "H", LONG: "I"}[typ]
    return b"".join(struct.pack(bo + fmt, x) for x in vals), len(vals)


def ifd(bo, start, entries, next_ifd=0):
    """One IFD placed at offset start (from the byte-order mark): a 2-byte
    count, 12-byte entries sorted by tag, the 4-byte offset of the next IFD,
    then the values over 4 bytes, each on a word boundary (TIFF 6.0 §2).
    entries: (tag, type, value)."""
    entries = sorted(entries)
    n = len(entries)
    head = struct.pack(bo + "H", n)
    data_at = start + 2 + 12 * n + 4
    extra = b""
    for tag, typ, v in entries:
        vb, count = _value(bo, typ, v)
        if len(vb) <= 4:
            field = vb.ljust(4, b"\x00")
        else:
            field = struct.pack(bo + "I", data_at + len(extra))
            extra += vb + (b"\x00" if len(vb) % 2 else b"")
        head += struct.pack(bo + "HHI", tag, typ, count) + field
    return head + struct.pack(bo + "I", next_ifd) + extra


def exif_app1(make, model, when, width, height, thumbnail=None, orientation=1):
    """An Exif APP1 payload (Exif 2.32 §4.5.4, §4.6): little-endian TIFF
    header, IFD0 (Make, Model, Orientation, resolution, DateTime,
    YCbCrPositioning, the Exif IFD pointer), the Exif IFD (the tags Table 4
    to Table 7 require of a compressed primary: ExifVersion 0232, the dates,
    ComponentsConfiguration, FlashpixVersion, ColorSpace sRGB, the pixel
    dimensions) and, with a thumbnail, IFD1 with the JPEG thumbnail after it
    (§4.5.5: Compression 6, resolution, JPEGInterchangeFormat and Length)."""
    bo = "<"
    res = [(0x011A, RATIONAL, (72, 1)), (0x011B, RATIONAL, (72, 1)), (0x0128, SHORT, 2)]
    ifd0 = [(0x010F, ASCII, make), (0x0110, ASCII, model), (0x0112, SHORT, orientation),
            (0x0132, ASCII, when), (0x0213, SHORT, 1), *res, (0x8769, LONG, 0)]
    exif = [(0x9000, UNDEFINED, b"0232"), (0x9003, ASCII, when), (0x9004, ASCII, when),
            (0x9101, UNDEFINED, b"\x01\x02\x03\x00"), (0xA000, UNDEFINED, b"0100"),
            (0xA001, SHORT, 1), (0xA002, LONG, width), (0xA003, LONG, height)]
    ifd1 = [(0x0103, SHORT, 6), *res, (0x0201, LONG, 0), (0x0202, LONG, 0)]
    at0 = 8
    at_exif = at0 + len(ifd(bo, at0, ifd0))
    at1 = at_exif + len(ifd(bo, at_exif, exif))
    ifd0 = [(t, ty, at_exif if t == 0x8769 else v) for t, ty, v in ifd0]
    body = ifd(bo, at0, ifd0, at1 if thumbnail else 0) + ifd(bo, at_exif, exif)
    if thumbnail:
        at_thumb = at1 + len(ifd(bo, at1, ifd1))
        ifd1 = [(t, ty, {0x0201: at_thumb, 0x0202: len(thumbnail)}.get(t, v))
                for t, ty, v in ifd1]
        body += ifd(bo, at1, ifd1) + thumbnail
    return EXIF_SIG + b"II*\x00" + struct.pack("<I", at0) + body


# ---------------------------------------------------------------------------
# XMP (ISO 16684-1 / XMP Part 1 §7, stored per XMP Part 3 §1.1.3)

def xmp_app1(description_attrs, inner="", namespaces=()):
    """An APP1 XMP payload: signature, then one x:xmpmeta packet in an
    xpacket wrapper (Part 1 §7.3.2) with a single rdf:Description carrying
    description_attrs as attributes (simple properties) and inner as its
    content. The packet must fit one APP1 segment (Part 3 §1.1.3; larger
    ones need Extended XMP, which no case here does)."""
    ns = "".join(f'\n        xmlns:{p}="{u}"' for p, u in namespaces)
    attrs = "".join(f'\n      {k}="{v}"' for k, v in description_attrs)
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 5.1.0-jc003">\n'
        f'  <rdf:RDF xmlns:rdf="{NS_RDF}">\n'
        f'    <rdf:Description rdf:about=""{ns}{attrs}>{inner}\n'
        "    </rdf:Description>\n"
        "  </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>').encode()
    if len(XMP_SIG) + len(packet) + 2 > 0xFFFF:
        raise ValueError("XMP packet over one APP1 segment")
    return XMP_SIG + packet


def container_directory(items):
    """A GContainer Container:Directory (Ultra HDR v1.0 "GContainer details";
    Motion Photo 1.0 "Container element"): an rdf:Seq of Container:Item
    structures, each a parseType="Resource" rdf:li, with the Item:
    attributes in the order given."""
    lis = "".join(
        '\n          <rdf:li rdf:parseType="Resource">\n'
        "            <Container:Item"
        + "".join(f'\n              Item:{k}="{v}"' for k, v in item)
        + "/>\n          </rdf:li>" for item in items)
    return ("\n      <Container:Directory>\n        <rdf:Seq>" + lis
            + "\n        </rdf:Seq>\n      </Container:Directory>")


def xmp_of(data):
    """The primary image's standard XMP packet as an ElementTree root, or
    None."""
    for m, off, ln in segments(data):
        p = data[off + 4:off + ln]
        if m == 0xE1 and p.startswith(XMP_SIG):
            return ET.fromstring(p[len(XMP_SIG):].decode())
    return None


def _simple(el, ns):
    """{name: value} of the simple properties in namespace ns on an RDF
    node, written either way RDF allows (Part 1 §7.9.2.2, 7.9.2.3): as
    attributes, or as child elements with text."""
    out = {k[len(ns) + 2:]: v for k, v in el.attrib.items() if k.startswith(f"{{{ns}}}")}
    for child in el:
        if child.tag.startswith(f"{{{ns}}}") and len(child) == 0 and child.text is not None:
            out[child.tag[len(ns) + 2:]] = child.text.strip()
    return out


def xmp_props(data, ns):
    """{name: value} of the simple properties in namespace ns across the
    primary's rdf:Descriptions."""
    root = xmp_of(data)
    out = {}
    if root is not None:
        for desc in root.iter(f"{{{NS_RDF}}}Description"):
            out.update(_simple(desc, ns))
    return out


def container_items(data):
    """The primary's Container:Directory as a list of {Mime, Semantic,
    Length, Padding, ...} dicts, in order (empty when there is none)."""
    root = xmp_of(data)
    if root is None:
        return []
    out = []
    for d in root.iter(f"{{{NS_CONTAINER}}}Directory"):
        for li in d.iter(f"{{{NS_RDF}}}li"):
            item = li.find(f"{{{NS_CONTAINER}}}Item")
            out.append(_simple(item if item is not None else li, NS_ITEM))
    return out


# ---------------------------------------------------------------------------
# Parts: the primary picture and the clip

def camera_jpeg(seed=0, width=320, height=240, make="Google", model="Pixel 7",
                xmp=None, extra_segments=(), quality=95, thumbnail=True):
    """A phone's primary JPEG: make_jpeg's scan and tables behind SOI, an
    Exif APP1 (with a 160x120 JPEG thumbnail) and, when given, an XMP APP1
    and extra_segments (whole segments, written after the XMP)."""
    body = strip_app(make_jpeg(None, width, height, seed=seed, quality=quality))
    thumb = strip_app(make_jpeg(None, 160, 120, seed=seed, quality=80)) if thumbnail else None
    segs = [segment(0xE1, exif_app1(make, model, "2024:05:17 10:11:12", width, height, thumb))]
    if xmp is not None:
        segs.append(segment(0xE1, xmp))
    return with_header(body, *segs, *extra_segments)


@functools.lru_cache(maxsize=16)
def clip(seed=0, codec="h264"):
    """A real MP4 (ISO/IEC 14496-14): 1 s of ffmpeg's testsrc at 160x120,
    10 fps, H.264 (x264) or HEVC (x265, tagged hvc1), with a 1 s AAC sine,
    faststart, bit-exact so the same arguments give the same bytes."""
    if codec == "h264":
        v = ["-c:v", "libx264", "-preset", "ultrafast", "-threads", "1"]
    elif codec == "hevc":
        v = ["-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1",
             "-x265-params", "log-level=error:pools=1:frame-threads=1"]
    else:
        raise ValueError(codec)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "clip.mp4")
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
             f"testsrc=size={CLIP_W}x{CLIP_H}:rate={CLIP_FPS}:duration=1,"
             f"hue=h={seed * 47 % 360}",
             "-f", "lavfi", "-i", f"sine=frequency={440 + 20 * seed}:sample_rate=16000:duration=1",
             *v, "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "24k", "-ac", "1",
             "-movflags", "+faststart", "-map_metadata", "-1", "-fflags", "+bitexact",
             "-flags:v", "+bitexact", "-flags:a", "+bitexact", out],
            check=True, capture_output=True)
        with open(out, "rb") as f:
            return f.read()


def _out(path, data):
    """data, written to path first when there is one."""
    if path:
        with open(path, "wb") as f:
            f.write(data)
    return data


# ---------------------------------------------------------------------------
# Builders

def google_motion_photo(path=None, seed=0, width=320, height=240, codec="hevc"):
    """A Google Motion Photo (Motion Photo format 1.0): the primary JPEG's
    XMP has the Camera properties (MotionPhoto 1, MotionPhotoVersion 1,
    MotionPhotoPresentationTimestampUs) and a Container:Directory of the
    Primary image/jpeg item and the MotionPhoto video/mp4 item whose
    Item:Length is the MP4's size; the MP4 follows the primary's EOI and
    ends the file (readers find it counting Item:Length from the end)."""
    mp4 = clip(seed, codec)
    xmp = xmp_app1(
        [("GCamera:MotionPhoto", 1), ("GCamera:MotionPhotoVersion", 1),
         ("GCamera:MotionPhotoPresentationTimestampUs", PRESENTATION_US)],
        container_directory([
            # nothing between a JPEG primary and the video: Padding 0
            [("Mime", "image/jpeg"), ("Semantic", "Primary"), ("Length", 0), ("Padding", 0)],
            [("Mime", "video/mp4"), ("Semantic", "MotionPhoto"), ("Length", len(mp4))],
        ]),
        [("GCamera", NS_GCAMERA), ("Container", NS_CONTAINER), ("Item", NS_ITEM)])
    return _out(path, camera_jpeg(seed, width, height, xmp=xmp) + mp4)


def mvimg(path=None, seed=0, width=320, height=240, codec="h264"):
    """An MVIMG_*.jpg of the Pixel 2/3 era (MicroVideo v1, which Motion
    Photo 1.0 lists as superseded): XMP GCamera:MicroVideo 1,
    MicroVideoVersion 1, MicroVideoOffset = the bytes from the MP4's start
    to the end of the file, MicroVideoPresentationTimestampUs; the MP4
    after the primary's EOI."""
    mp4 = clip(seed, codec)
    xmp = xmp_app1(
        [("GCamera:MicroVideo", 1), ("GCamera:MicroVideoVersion", 1),
         ("GCamera:MicroVideoOffset", len(mp4)),
         ("GCamera:MicroVideoPresentationTimestampUs", PRESENTATION_US)],
        namespaces=[("GCamera", NS_GCAMERA)])
    return _out(path, camera_jpeg(seed, width, height, model="Pixel 3", xmp=xmp) + mp4)


# Samsung trailer block types (Image::ExifTool::Samsung::Trailer)
SEF_UTC = 0x0A01           # "Image_UTC_Data": capture time, ms since 1970 (ExifTool TimeStamp)
SEF_MOTION_PHOTO = 0x0A30  # "MotionPhoto_Data": the MP4 (ExifTool EmbeddedVideoFile)
# SEFH version: ExifTool's notes show 101 (Galaxy Tab S "Sound & Shot");
# writers made to match Galaxy motion photos use 106 and 107
SEF_VERSION = 106
SEF_UTC_MS = 1715940672000   # 2024-05-17 10:11:12 UTC, the Exif DateTimeOriginal


def sef_block(typ, name, payload):
    """A Samsung trailer data block, as ProcessSamsung reads it: 2 zero
    bytes, the 16-bit little-endian type, the 32-bit little-endian name
    length, the name (no NUL), then the payload."""
    return b"\x00\x00" + struct.pack("<HI", typ, len(name)) + name + payload


def sef_trailer(blocks):
    """Samsung's SEF trailer for blocks [(type, name, payload)]: the blocks
    in order, then the SEFH directory ("SEFH", version, count, and per block
    12 bytes: 2 zero bytes, type, the offset of the block's start counted
    back from the SEFH position, the block's size), then the directory's
    length (from "SEFH" to before this field) and "SEFT" - all little-
    endian, as ExifTool's Samsung.pm (ProcessSamsung) reads it back from
    the end of the file. Returns (trailer, where each block's payload
    starts within it)."""
    data, starts, payload_at = b"", [], []
    for typ, name, payload in blocks:
        starts.append(len(data))
        payload_at.append(len(data) + 8 + len(name))
        data += sef_block(typ, name, payload)
    sefh_pos = len(data)
    d = b"SEFH" + struct.pack("<II", SEF_VERSION, len(blocks))
    for (typ, name, payload), at in zip(blocks, starts):
        d += b"\x00\x00" + struct.pack("<HII", typ, sefh_pos - at, 8 + len(name) + len(payload))
    return data + d + struct.pack("<I", len(d)) + b"SEFT", payload_at


def samsung_sef(path=None, seed=0, width=320, height=240, codec="h264", xmp=True):
    """A Samsung Galaxy motion photo: after the primary's EOI the
    "MotionPhoto_Data" block holding the MP4, an "Image_UTC_Data" block,
    then the SEFH..SEFT directory naming both. With xmp (as later Galaxy
    phones write) the primary also declares GCamera:MotionPhoto and a
    Container:Directory laid out the way a from-the-end reader (media3's
    MotionPhotoDescription) finds the MP4: the Primary item's Item:Padding
    is the 24 bytes of block header before the MP4, the MotionPhoto item's
    Item:Length runs from the MP4's start to the end of the file (the SEF
    blocks after it ride along, as MP4 readers ignore trailing bytes)."""
    mp4 = clip(seed, codec)
    blocks = [(SEF_MOTION_PHOTO, b"MotionPhoto_Data", mp4),
              (SEF_UTC, b"Image_UTC_Data", str(SEF_UTC_MS).encode())]
    tail, at = sef_trailer(blocks)
    x = None
    if xmp:
        x = xmp_app1(
            [("GCamera:MotionPhoto", 1), ("GCamera:MotionPhotoVersion", 1),
             ("GCamera:MotionPhotoPresentationTimestampUs", PRESENTATION_US)],
            container_directory([
                [("Mime", "image/jpeg"), ("Semantic", "Primary"), ("Length", 0),
                 ("Padding", at[0])],
                [("Mime", "video/mp4"), ("Semantic", "MotionPhoto"),
                 ("Length", len(tail) - at[0]), ("Padding", 0)],
            ]),
            [("GCamera", NS_GCAMERA), ("Container", NS_CONTAINER), ("Item", NS_ITEM)])
    primary = camera_jpeg(seed, width, height, make="samsung", model="SM-S911B", xmp=x)
    return _out(path, primary + tail)


# CIPA DC-007 §5.2.3.3.1: MP Entry Individual Image Attribute
MP_TYPE_PRIMARY = 0x030000   # "Baseline MP Primary Image"
MP_TYPE_UNDEFINED = 0x000000

# Ultra HDR v1.0 "HDR gain map metadata": a map of up to 5x boost
# (log2 5 = 2.3219281), the spec's default gamma and offsets
GAIN_MAP_META = [("Version", "1.0"), ("GainMapMin", "0"), ("GainMapMax", "2.3219281"),
                 ("Gamma", "1"), ("OffsetSDR", "0.015625"), ("OffsetHDR", "0.015625"),
                 ("HDRCapacityMin", "0"), ("HDRCapacityMax", "2.3219281"),
                 ("BaseRenditionIsHDR", "False")]


def mpf_app2(bo, images):
    """The APP2 "MPF\\0" payload of the first image (CIPA DC-007 §5.2): the
    MP Header (MP Endian "II*\\0"/"MM\\0*", then the offset of the first IFD,
    8: right after it), the MP Index IFD (MPFVersion "0100", NumberOfImages,
    MPEntry: 16 bytes an image) with no MP Attribute IFD (next-IFD offset
    0, as libultrahdr writes it). images: [(attribute, size, offset)] with
    offsets from the MP Endian field, the first image's 0 (§5.2.3.3.3)."""
    entry = b"".join(struct.pack(bo + "III", a, s, o) + struct.pack(bo + "HH", 0, 0)
                     for a, s, o in images)
    endian = b"II*\x00" if bo == "<" else b"MM\x00*"
    index = ifd(bo, 8, [(0xB000, UNDEFINED, b"0100"), (0xB001, LONG, len(images)),
                        (0xB002, UNDEFINED, entry)])
    return MPF_SIG + endian + struct.pack(bo + "I", 8) + index


def gain_map_jpeg(seed, width, height):
    """The gain map, a grayscale JPEG of a quarter of the primary's size on
    each side (the spec's advice) whose XMP carries the hdrgm metadata
    (Ultra HDR v1.0 "HDR gain map metadata": hdrgm:Version "1.0", the map's
    range, gamma, offsets and HDR capacity)."""
    body = strip_app(make_jpeg(None, max(8, width // 4), max(8, height // 4), seed=seed + 100,
                               quality=85, extra=("-grayscale",)))
    xmp = xmp_app1([(f"hdrgm:{k}", v) for k, v in GAIN_MAP_META],
                   namespaces=[("hdrgm", NS_HDRGM)])
    return with_header(body, segment(0xE1, xmp))


def _ultrahdr(seed, width, height, bo, video, mpf_before_sos=False):
    """The primary with its MPF and GContainer XMP, the gain map, and an
    optional MP4 last."""
    gain = gain_map_jpeg(seed, width, height)
    items = [[("Semantic", "Primary"), ("Mime", "image/jpeg")],
             [("Semantic", "GainMap"), ("Mime", "image/jpeg"), ("Length", len(gain))]]
    attrs = [("hdrgm:Version", "1.0")]
    ns = [("Container", NS_CONTAINER), ("Item", NS_ITEM), ("hdrgm", NS_HDRGM)]
    if video is not None:
        attrs = [("GCamera:MotionPhoto", 1), ("GCamera:MotionPhotoVersion", 1),
                 ("GCamera:MotionPhotoPresentationTimestampUs", PRESENTATION_US)] + attrs
        ns = [("GCamera", NS_GCAMERA)] + ns
        items.append([("Semantic", "MotionPhoto"), ("Mime", "video/mp4"),
                      ("Length", len(video))])
    xmp = xmp_app1(attrs, container_directory(items), ns)
    # the MPF segment has a fixed size: lay the primary out with zero
    # offsets, then fill them in
    blank = segment(0xE2, mpf_app2(bo, [(MP_TYPE_PRIMARY, 0, 0), (MP_TYPE_UNDEFINED, 0, 0)]))
    if mpf_before_sos:
        primary = camera_jpeg(seed, width, height, xmp=xmp)
        _, off, ln = segments(primary)[-1]
        mpf_at = off + ln
        primary = primary[:mpf_at] + blank + primary[mpf_at:]
    else:
        primary = camera_jpeg(seed, width, height, xmp=xmp, extra_segments=[blank])
        mpf_at = primary.index(blank)
    mp_header = mpf_at + 4 + len(MPF_SIG)
    real = segment(0xE2, mpf_app2(bo, [
        (MP_TYPE_PRIMARY, len(primary), 0),
        (MP_TYPE_UNDEFINED, len(gain), len(primary) - mp_header)]))
    assert len(real) == len(blank)
    primary = primary[:mpf_at] + real + primary[mpf_at + len(real):]
    return primary + gain + (video or b"")


def mpf_gainmap(path=None, seed=0, width=320, height=240, byteorder=">", mpf_before_sos=False):
    """An Ultra HDR JPEG (Ultra HDR Image Format v1.0, "JPEG_R"): the
    primary's XMP declares hdrgm:Version "1.0" and a Container:Directory of
    the Primary item and the GainMap item (Item:Length = the gain map's
    size); its APP2 MPF index (CIPA DC-007) lists both images, the primary
    as Baseline MP Primary Image at offset 0, the gain map (type Undefined)
    at its offset from the MP header's byte-order mark; the gain map JPEG,
    with its own hdrgm XMP, follows the primary's EOI. byteorder: ">" big-
    endian as libultrahdr writes it, "<" little-endian. The MPF segment
    follows the XMP among the header segments, as DC-007's file structure
    and libultrahdr until 2026 place it; mpf_before_sos puts it after the
    tables, right before SOS, where libultrahdr writes it since then (so
    it is no longer part of header_segments())."""
    return _out(path, _ultrahdr(seed, width, height, byteorder, None, mpf_before_sos))


def pixel_ultrahdr_motion(path=None, seed=0, width=320, height=240, codec="hevc"):
    """What current Pixels write: an Ultra HDR primary that is also a Motion
    Photo. One Container:Directory lists Primary, GainMap and MotionPhoto;
    MPF indexes the two images; the file is primary + gain map + MP4."""
    return _out(path, _ultrahdr(seed, width, height, ">", clip(seed, codec)))


def trailing_byte(path=None, seed=0, width=320, height=240, byte=b"\x00"):
    """A camera JPEG with a single byte after its EOI (some cameras and
    editors leave one)."""
    assert len(byte) == 1
    return _out(path, camera_jpeg(seed, width, height, make="Canon",
                                  model="Canon PowerShot G7 X") + byte)


def trailing_zeros(path=None, seed=0, width=320, height=240, count=4096):
    """A camera JPEG padded with count zero bytes after its EOI (writers
    that round files up to a block)."""
    return _out(path, camera_jpeg(seed, width, height, make="NIKON CORPORATION",
                                  model="COOLPIX P1000") + bytes(count))


# ---------------------------------------------------------------------------
# Readers

def from_end_video(data):
    """The motion photo MP4 as a reader that counts from the end of the file
    finds it, or None: with a Container:Directory, the way media3's
    MotionPhotoDescription walks it (items from the last, each item's
    Item:Length back from the end, Item:Padding applied to the primary
    only), the video/mp4 item's bytes; with only MicroVideo, the last
    MicroVideoOffset bytes. MotionPhoto or MicroVideo must be 1."""
    cam = xmp_props(data, NS_GCAMERA)
    items = container_items(data)
    if cam.get("MotionPhoto") == "1" and items:
        # a video item of Length 0 shares the resource of the item before it
        end, video = len(data), False
        for item in reversed(items[1:]):
            video |= item.get("Mime") == "video/mp4"
            start = end - int(item.get("Length", 0))
            if video and start != end:
                return data[start:end] if start >= 0 else None
            end = start
        return None
    if cam.get("MicroVideo") == "1" and "MicroVideoOffset" in cam:
        off = int(cam["MicroVideoOffset"])
        return data[len(data) - off:] if 0 < off <= len(data) else None
    return None


def mpf_images(data):
    """Each image an MPF index lists, as bytes, in index order: the APP2
    "MPF\\0" segment of the primary is found among its marker segments, its
    MP Index IFD read (either byte order), and each MP Entry's size and
    offset (from the MP Endian field; 0 for the first image, which starts
    at the file's SOI) taken (CIPA DC-007 §5.2.3). None without MPF."""
    for m, off, ln in segments(data):
        p = data[off + 4:off + ln]
        if m == 0xE2 and p.startswith(MPF_SIG):
            break
    else:
        return None
    base = off + 4 + len(MPF_SIG)
    hdr = data[base:off + ln]
    bo = {b"II*\x00": "<", b"MM\x00*": ">"}.get(hdr[:4])
    if bo is None:
        raise ValueError("MPF: bad MP Endian")
    at = struct.unpack(bo + "I", hdr[4:8])[0]
    count = struct.unpack(bo + "H", hdr[at:at + 2])[0]
    entries = None
    for k in range(count):
        tag, typ, n, val = struct.unpack(bo + "HHI4s", hdr[at + 2 + 12 * k:at + 14 + 12 * k])
        if tag == 0xB002:
            o = struct.unpack(bo + "I", val)[0]
            entries = hdr[o:o + n]
    if entries is None or len(entries) % 16:
        raise ValueError("MPF: no MP Entry")
    out = []
    for k in range(len(entries) // 16):
        attr, size, offset, _, _ = struct.unpack(bo + "IIIHH", entries[16 * k:16 * k + 16])
        start = 0 if k == 0 else base + offset
        out.append(data[start:start + size])
    return out


def exiftool_extract(path, tag, embedded=False):
    """exiftool -b -TAG path (with -ee when embedded): the tag's binary value
    as bytes (empty when exiftool finds no such tag)."""
    args = ["exiftool", "-b"] + (["-ee"] if embedded else []) + [f"-{tag}", path]
    return subprocess.run(args, capture_output=True, check=True).stdout


# ---------------------------------------------------------------------------
# What the mount tests check, per case

@dataclasses.dataclass(frozen=True)
class Case:
    """One phone file for the mount tests and what its view must keep.

    name      the builder's name; build(path=None, seed=0) -> bytes
    filename  a name such a phone gives the file
    parts     [(what, exiftool tag, ee, part)]: exiftool_extract(view, tag,
              ee) must equal part(original), part computed without exiftool
    xmp       {"Group:Tag": value} that exiftool -a -G1 -n -s must still
              report on the view
    from_end  from_end_video() finds a clip: the view's must equal the
              original's
    mpf       mpf_images() finds an index: the view's [1:] must equal the
              original's, and its [0] must be the view's own primary
    note      what exiftool 12.57 cannot reach, if anything
    For every case also: len(view) == len(original); header_segments() and
    trailer() equal (so every part after the EOI is where it was); only
    scan() may differ."""
    name: str
    build: object
    filename: str
    parts: tuple
    xmp: dict
    from_end: bool
    mpf: bool
    note: str = ""


def cases():
    """The phone cases, in a fixed order (see Case)."""
    def whole_trailer(data):
        return trailer(data)

    def samsung_video(data):
        return _sef_payload(trailer(data), SEF_MOTION_PHOTO)

    def second_image(data):
        return mpf_images(data)[1]

    # exiftool -b -Trailer returns everything after the EOI, whatever it is
    every = ("trailer", "Trailer", False, whole_trailer)
    cam = {"XMP-GCamera:MotionPhoto": "1", "XMP-GCamera:MotionPhotoVersion": "1",
           "XMP-GCamera:MotionPhotoPresentationTimestampUs": str(PRESENTATION_US)}
    return [
        Case("google_motion_photo", google_motion_photo, "PXL_20240517_101112345.MP.jpg",
             (every, ("MP4", "EmbeddedVideo", True, whole_trailer)), cam, True, False),
        Case("mvimg", mvimg, "MVIMG_20190517_101112.jpg",
             (every, ("MP4", "EmbeddedVideo", True, whole_trailer)),
             {"XMP-GCamera:MicroVideo": "1", "XMP-GCamera:MicroVideoVersion": "1",
              "XMP-GCamera:MicroVideoPresentationTimestampUs": str(PRESENTATION_US)},
             True, False),
        Case("samsung_sef", samsung_sef, "20240517_101112.jpg",
             (every, ("MP4", "EmbeddedVideoFile", False, samsung_video)),
             dict(cam, **{"Samsung:EmbeddedVideoType": "MotionPhoto_Data",
                          "Samsung:TimeStamp": "2024:05:17 10:11:12.000+00:00"}),
             True, False,
             "EmbeddedVideo (-ee) finds nothing: the trailer starts with the block header"),
        Case("mpf_gainmap", mpf_gainmap, "PXL_20240520_131415678.jpg",
             (every, ("gain map", "MPImage2", False, second_image)),
             {"XMP-hdrgm:Version": "1.0", "MPF0:NumberOfImages": "2"}, False, True),
        Case("pixel_ultrahdr_motion", pixel_ultrahdr_motion, "PXL_20240601_090807123.MP.jpg",
             (every, ("gain map", "MPImage2", False, second_image)),
             dict(cam, **{"XMP-hdrgm:Version": "1.0", "MPF0:NumberOfImages": "2"}), True, True,
             "exiftool 12.57 does not extract the MP4 after the gain map: only from_end_video"),
        Case("trailing_byte", trailing_byte, "IMG_0001.JPG", (every,), {}, False, False),
        Case("trailing_zeros", trailing_zeros, "DSCN0001.JPG", (every,), {}, False, False),
    ]


def _sef_payload(tail, typ):
    """The payload of the SEF block of type typ, read through the SEFH
    directory at the end of tail (independently of how it was built)."""
    if tail[-4:] != b"SEFT":
        raise ValueError("no SEFT")
    dlen = struct.unpack("<I", tail[-8:-4])[0]
    sefh = len(tail) - 8 - dlen
    d = tail[sefh:sefh + dlen]
    if d[:4] != b"SEFH":
        raise ValueError("no SEFH")
    _, count = struct.unpack("<II", d[4:12])
    for k in range(count):
        _, t, back, size = struct.unpack("<HHII", d[12 + 12 * k:24 + 12 * k])
        if t == typ:
            blk = tail[sefh - back:sefh - back + size]
            nlen = struct.unpack("<I", blk[4:8])[0]
            return blk[8 + nlen:]
    raise ValueError(f"no SEF block 0x{typ:04x}")
