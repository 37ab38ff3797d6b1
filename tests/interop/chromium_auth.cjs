// Headless Chromium (Debian's) authenticating to viaduct through puppeteer-core's
// page.authenticate, which answers the proxy's 407 challenge the way a user would.
// usage: node chromium_auth.cjs CHROMIUM PROXY_URL SPKI USER PASS URL...
const puppeteer = require('puppeteer-core');

(async () => {
  const [exe, proxy, spki, user, pass, ...urls] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    executablePath: exe,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      `--proxy-server=${proxy}`,
      // Chromium skips proxies for loopback unless told.
      '--proxy-bypass-list=<-loopback>',
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
  try {
    for (const url of urls) {
      const page = await browser.newPage();
      await page.authenticate({ username: user, password: pass });
      const resp = await page.goto(url, { waitUntil: 'load', timeout: 30000 });
      const text = await page.evaluate(() => document.body.innerText);
      if (resp.status() !== 200 || !text.includes('hello from nginx')) {
        throw new Error(`${url}: ${resp.status()} ${text}`);
      }
      console.log(`ok ${url}`);
      await page.close();
    }
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(String(e));
  process.exit(1);
});
