// Regenerates the browser SDP samples in this folder with real browsers.
//
// Not part of CI: the samples are committed, and this script documents how
// they were made so that a maintainer can refresh them when browsers change.
//
// Requirements (Debian):
//   apt-get install -y chromium firefox-esr
//   mkdir /tmp/sdpgen && cd /tmp/sdpgen && npm init -y
//   npm install playwright-core puppeteer-core
//   cp <repo>/tests/data/sdp/generate.mjs /tmp/sdpgen/
//   node /tmp/sdpgen/generate.mjs <repo>/tests/data/sdp [sample-name ...]
//
// The script is copied next to its node_modules because ES modules resolve
// packages from the script's own location, not from the working directory.
//
// Chromium is driven with playwright-core, Firefox with puppeteer-core over
// WebDriver BiDi. Both open a page served from http://localhost (a secure
// context, so getUserMedia works) and use the browsers' fake camera and
// microphone, so the SDPs carry real tracks, msids and ssrcs. Each offer comes
// from one RTCPeerConnection and its answer from a second one in the same page,
// which also sends audio and video. ICE gathering is awaited (up to a timeout),
// so the files are complete non-trickle SDPs with candidate lines, byte-exact
// as `localDescription.sdp` gives them (CRLF line endings).

import { createServer } from 'node:http';
import { writeFileSync, mkdirSync } from 'node:fs';
import { resolve } from 'node:path';

const outDir = resolve(process.argv[2] ?? '.');
const only = new Set(process.argv.slice(3));
const wanted = (name) => only.size === 0 || only.has(name);

// Runs in the page. `kind` picks the media of the offer:
//   'av'        audio + video + data channel
//   'simulcast' one video track sent as three simulcast encodings (rids)
//   'audio'     audio only
async function makePair(kind) {
  const media = await navigator.mediaDevices
    .getUserMedia({ audio: kind !== 'simulcast', video: kind !== 'audio' })
    .catch(() => null);
  const pc1 = new RTCPeerConnection();
  const pc2 = new RTCPeerConnection();
  if (kind === 'simulcast') {
    const video = media ? media.getVideoTracks()[0] : 'video';
    pc1.addTransceiver(video, {
      direction: 'sendonly',
      streams: media ? [media] : [],
      sendEncodings: [
        { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
        { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
        { rid: 'f', maxBitrate: 1500000 },
      ],
    });
  } else {
    for (const track of media ? media.getTracks() : []) {
      pc1.addTrack(track, media);
    }
    if (!media) {
      pc1.addTransceiver('audio');
      if (kind === 'av') pc1.addTransceiver('video');
    }
    if (kind === 'av') pc1.createDataChannel('chat');
  }
  const gathered = (pc) =>
    new Promise((done) => {
      if (pc.iceGatheringState === 'complete') return done();
      const timer = setTimeout(done, 8000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(timer);
          done();
        }
      });
    });
  await pc1.setLocalDescription(await pc1.createOffer());
  await gathered(pc1);
  const offer = pc1.localDescription.sdp;
  await pc2.setRemoteDescription({ type: 'offer', sdp: offer });
  // The answerer sends its own camera and microphone back, as in a call.
  if (media && kind === 'av') {
    const answerMedia = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    for (const track of answerMedia.getTracks()) pc2.addTrack(track, answerMedia);
  }
  await pc2.setLocalDescription(await pc2.createAnswer());
  await gathered(pc2);
  const answer = pc2.localDescription.sdp;
  pc1.close();
  pc2.close();
  return { offer, answer, ua: navigator.userAgent, gum: media !== null };
}

const server = createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<!doctype html><title>sdpgen</title>');
});
await new Promise((done) => server.listen(0, '127.0.0.1', done));
const url = `http://localhost:${server.address().port}/`;
mkdirSync(outDir, { recursive: true });

function save(name, sdp) {
  if (!wanted(name)) return;
  if (!sdp.includes('\r\n')) throw new Error(`${name}: expected CRLF line endings`);
  writeFileSync(resolve(outDir, name), sdp, 'utf8');
  console.log(`${name}: ${Buffer.byteLength(sdp)} bytes`);
}

async function run(page, browserName, version) {
  const jobs = [
    ['av', `${browserName}-offer.sdp`, `${browserName}-answer.sdp`],
    ['simulcast', `${browserName}-offer-simulcast.sdp`, `${browserName}-answer-simulcast.sdp`],
    ['audio', `${browserName}-offer-audio.sdp`, `${browserName}-answer-audio.sdp`],
  ];
  for (const [kind, offerName, answerName] of jobs) {
    if (!wanted(offerName) && !wanted(answerName)) continue;
    const { offer, answer, ua, gum } = await page.evaluate(makePair, kind);
    console.log(`${browserName} ${version} (${ua}) ${kind} getUserMedia=${gum}`);
    save(offerName, offer);
    save(answerName, answer);
  }
}

const wants = (browser) => only.size === 0 || [...only].some((n) => n.startsWith(browser));

if (wants('chrome')) {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
    ],
  });
  const page = await browser.newPage();
  await page.goto(url);
  await run(page, 'chrome', browser.version());
  await browser.close();
}

if (wants('firefox')) {
  const puppeteer = (await import('puppeteer-core')).default;
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX ?? '/usr/bin/firefox-esr',
    headless: true,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
    },
  });
  const page = await browser.newPage();
  await page.goto(url);
  await run(page, 'firefox', await browser.version());
  await browser.close();
}

server.close();
